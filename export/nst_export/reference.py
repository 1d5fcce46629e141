"""The Gatys et al. loss written plainly in PyTorch: the ground truth the ONNX graphs are checked against.

x is an RGB image in [0, 1], shape (1, 3, H, W). F_l(x) is the ReLU output of layer l seen as an
N_l x M_l matrix (N_l channels, M_l = H_l * W_l positions).
- content: L_c = sum_l c_l * mean((F_l(x) - P_l)^2)
- style: G_l = F_l F_l^T / (N_l M_l), L_s = sum_l w_l * mean((G_l(x) - A_l)^2)
- total variation: L_tv = mean(vertical differences^2) + mean(horizontal differences^2)
- total: L = alpha L_c + beta L_s + gamma L_tv
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from nst_server.manifest import Preprocessing

from .vgg import VGG19Features

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def preprocess(x: torch.Tensor, flavour: Preprocessing) -> torch.Tensor:
    """Turn RGB in [0, 1] into what the weights were trained on."""
    if flavour == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std
    bgr = x.flip(1) * 255.0
    return bgr - torch.tensor(CAFFE_MEAN_BGR, dtype=x.dtype).view(1, 3, 1, 1)


def gram(features: torch.Tensor) -> torch.Tensor:
    """G = F F^T / (N M) for features of shape (1, N, H, W)."""
    channels = features.shape[1]
    matrix = features.reshape(channels, -1)
    return matrix @ matrix.T / matrix.numel()


@dataclass(frozen=True, slots=True)
class Targets:
    """Content features and style Gram matrices, by layer name."""

    content: dict[str, torch.Tensor]
    gram: dict[str, torch.Tensor]


def targets(
    model: VGG19Features,
    image: torch.Tensor,
    flavour: Preprocessing,
    content_layers: tuple[str, ...],
    style_layers: tuple[str, ...],
) -> Targets:
    """What the targets graph computes: F_l(p) at the content layers and G_l(a) at the style layers."""
    with torch.no_grad():
        features = model(preprocess(image, flavour), content_layers + style_layers)
    return Targets(
        content={name: features[name] for name in content_layers},
        gram={name: gram(features[name]) for name in style_layers},
    )


@dataclass(frozen=True, slots=True)
class LossTerms:
    """The total loss, its unweighted terms, and (when asked for) d(total)/d(image)."""

    total: torch.Tensor
    content: torch.Tensor
    style: torch.Tensor
    tv: torch.Tensor
    grad: torch.Tensor | None = None


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """L_tv: mean squared difference of vertical neighbours plus that of horizontal neighbours."""
    vertical = x[..., 1:, :] - x[..., :-1, :]
    horizontal = x[..., :, 1:] - x[..., :, :-1]
    return vertical.square().mean() + horizontal.square().mean()


def gatys_loss(
    model: VGG19Features,
    image: torch.Tensor,
    flavour: Preprocessing,
    target: Targets,
    loss_weights: tuple[float, float, float],
    content_layer_weights: tuple[float, ...],
    style_layer_weights: tuple[float, ...],
) -> LossTerms:
    """The total loss and its terms at ``image``, with the gradient from PyTorch autograd."""
    x = image.detach().clone().requires_grad_(True)
    content_layers, style_layers = tuple(target.content), tuple(target.gram)
    features = model(preprocess(x, flavour), content_layers + style_layers)
    zero = torch.zeros((), dtype=x.dtype)
    content_terms = zip(content_layers, content_layer_weights, strict=True)
    content = sum((w * (features[n] - target.content[n]).square().mean() for n, w in content_terms), start=zero)
    style_terms = zip(style_layers, style_layer_weights, strict=True)
    style = sum((w * (gram(features[n]) - target.gram[n]).square().mean() for n, w in style_terms), start=zero)
    tv = total_variation(x)
    alpha, beta, gamma = loss_weights
    total = alpha * content + beta * style + gamma * tv
    total.backward()
    return LossTerms(total.detach(), content.detach(), style.detach(), tv.detach(), x.grad)
