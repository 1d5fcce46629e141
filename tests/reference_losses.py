"""The loss a server should report for its first evaluation, computed independently with the PyTorch reference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from nst_export import reference
from nst_export.vgg import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, VGG19Features
from nst_export.weights import init_random
from PIL import Image

MODEL_SEED = 3  # conftest's model_dir: random weights, seed 3, max pooling, ImageNet preprocessing


def tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as the server's array convention: (1, 3, H, W) float32 RGB in [0, 1]."""
    return torch.from_numpy(np.asarray(image, np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def first_losses(
    content: Image.Image,
    styles: Sequence[Image.Image],
    loss_weights: tuple[float, float, float],
    style_layer_weights: tuple[float, ...] = (0.2,) * 5,
) -> reference.LossTerms:
    """Losses at a gray start (as INIT_GRAY), images already at their working sizes, equal style blend."""
    model = VGG19Features("relu5_1", "max")
    init_random(model, seed=MODEL_SEED)
    layers = (DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS)
    grams = [reference.targets(model, tensor(style), "imagenet", *layers).gram for style in styles]
    blended = {name: sum(g[name] for g in grams) / len(grams) for name in DEFAULT_STYLE_LAYERS}
    targets = reference.Targets(reference.targets(model, tensor(content), "imagenet", *layers).content, blended)
    gray = torch.full((1, 3, content.height, content.width), 0.5)
    return reference.gatys_loss(model, gray, "imagenet", targets, loss_weights, (1.0,), style_layer_weights)
