"""Weights a user might bring: the recipe of issue 27, on which the export's self-check once refused good weights.

He-initialised VGG19 (N(0, 2/fan_out), torch.manual_seed), N(0, 0.01) biases, then each conv rescaled in forward
order so that its ReLU's mean output on a 224 px image is 1. The issue measured on tubingen; the tests use the
export's own seeded 1/f noise (``nst_export.weights.reference_image``) so that they need no ../shared.
"""

from __future__ import annotations

import torch
from nst_export.reference import preprocess
from nst_export.vgg import VGG19Features
from nst_export.weights import reference_image
from torch import nn

RECIPE_SEED = 3


def unit_mean_state_dict(seed: int = RECIPE_SEED, image: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The recipe's full VGG19 state dict (torchvision layout), rescaled on ``image`` (default: 1/f noise)."""
    model = VGG19Features("relu5_4", "max")
    torch.manual_seed(seed)
    with torch.no_grad():
        convs = [module for module in model.features if isinstance(module, nn.Conv2d)]
        for conv in convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.normal_(conv.bias, 0.0, 0.01)
        x = preprocess(reference_image(seed) if image is None else image, "imagenet")
        for module in model.features:
            y = module(x)
            if isinstance(module, nn.Conv2d):
                module.weight.mul_(1.0 / float(torch.relu(y).mean()))
                y = module(x)
            x = y
    return dict(model.state_dict())
