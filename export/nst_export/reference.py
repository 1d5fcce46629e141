"""The Gatys et al. loss written plainly in PyTorch: the ground truth the ONNX graphs are checked against.

x is an RGB image in [0, 1], shape (1, 3, H, W). F_l(x) is the ReLU output of layer l seen as an
N_l x M_l matrix (N_l channels, M_l = H_l * W_l positions).
- content: L_c = sum_l c_l * mean((F_l(x) - P_l)^2)
  [departs from Gatys: the paper has 1/2 * sum, not the mean over N_l M_l entries]
- style: G_l = F_l F_l^T / (N_l M_l), L_s = sum_l w_l * mean((G_l(x) - A_l)^2)
  [departs from Gatys: the paper's G_l = F_l F_l^T is not normalised and its E_l = sum (G - A)^2 / (4 N_l^2 M_l^2);
  normalising G by N_l M_l and taking the mean over its N_l^2 entries gives 4 E_l / N_l^2, i.e. the paper's loss
  with layer l weighted 4 / N_l^2 more; w_l are then chosen equal]
- total variation: L_tv = mean(vertical differences^2) + mean(horizontal differences^2)
  [not in Gatys 2016: a smoothness prior (Mahendran and Vedaldi), off with gamma = 0]
- total: L = alpha L_c + beta L_s + gamma L_tv
Mean-normalised terms keep alpha and beta meaningful across image sizes and layer choices (as in crowsonkb's
style-transfer and PyTorch's neural-style tutorial); the manifest's default weights assume them.

Spatial control (Gatys et al. 2017): region r's guide T_r, averaged 2x2 at every pooling to each layer's grid,
weights the features' columns: G_r = (F T_r)(F T_r)^T / (N sum_m T_r[m]^2), and
L_s = sum_l w_l sum_r lambda_r mean((G_r(x) - A_r)^2). One all-ones region with lambda 1 is the loss above.
``circular`` evaluates every convolution with circular padding and L_tv on the torus.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from nst.manifest import Preprocessing
from torch import nn
from torch.nn import functional

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


def guided_gram(features: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """G_r = (F T_r)(F T_r)^T / (N sum T_r^2) for features (1, N, H, W) and guides (R, H, W): (R, N, N)."""
    channels = features.shape[1]
    weighted = features.reshape(1, channels, -1) * guide.reshape(guide.shape[0], 1, -1)
    mass = guide.reshape(guide.shape[0], -1).square().sum(dim=1).view(-1, 1, 1)
    return weighted @ weighted.transpose(1, 2) / (channels * mass)


def layer_guides(model: VGG19Features, guides: torch.Tensor, wanted: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Guides (R, H, W) at each wanted layer's grid: averaged 2x2 wherever the network pools."""
    mask = guides.unsqueeze(1)
    by_layer: dict[str, torch.Tensor] = {}
    for layer in model.layers:
        if layer.kind == "pool":
            mask = functional.avg_pool2d(mask, 2, 2)
        if layer.name in wanted:
            by_layer[layer.name] = mask.squeeze(1)
    return by_layer


class CircularPadding:
    """Within the block, every conv of ``model`` pads circularly (PyTorch's own padding_mode="circular")."""

    def __init__(self, model: VGG19Features, on: bool) -> None:
        self.convs = [m for m in model.features if isinstance(m, nn.Conv2d)] if on else []

    def __enter__(self) -> None:
        for conv in self.convs:
            conv.padding_mode = "circular"

    def __exit__(self, *_: object) -> None:
        for conv in self.convs:
            conv.padding_mode = "zeros"


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
    guide: torch.Tensor | None = None,
    circular: bool = False,
) -> Targets:
    """What the targets graph computes: F_l(p) at the content layers and G_l(a) at the style layers.

    With ``guide`` (H, W), the style layers' Gram matrices are guided by it (only that part of the image counts).
    """
    with torch.no_grad(), CircularPadding(model, circular):
        features = model(preprocess(image, flavour), content_layers + style_layers)
        grams = {name: gram(features[name]) for name in style_layers}
        if guide is not None:
            guides = layer_guides(model, guide.unsqueeze(0), style_layers)
            grams = {name: guided_gram(features[name], guides[name])[0] for name in style_layers}
    return Targets(content={name: features[name] for name in content_layers}, gram=grams)


@dataclass(frozen=True, slots=True)
class LossTerms:
    """The total loss, its unweighted terms, and (when asked for) d(total)/d(image)."""

    total: torch.Tensor
    content: torch.Tensor
    style: torch.Tensor
    tv: torch.Tensor
    grad: torch.Tensor | None = None


def total_variation(x: torch.Tensor, circular: bool = False) -> torch.Tensor:
    """L_tv: mean squared difference of vertical neighbours plus that of horizontal ones (wrapping if circular)."""
    if circular:
        return sum((torch.roll(x, -1, dims=d) - x).square().mean() for d in (2, 3))  # type: ignore[return-value]  # sum() of tensors is a tensor; its typing allows sum's int 0
    vertical = x[..., 1:, :] - x[..., :-1, :]
    horizontal = x[..., :, 1:] - x[..., :, :-1]
    return vertical.square().mean() + horizontal.square().mean()


@dataclass(frozen=True, slots=True)
class GuidedRegions:
    """Region guides (R, H, W) at the image's size and their weights (R,); targets' Grams are then (R, N, N)."""

    guides: torch.Tensor
    weights: torch.Tensor


def gatys_loss(
    model: VGG19Features,
    image: torch.Tensor,
    flavour: Preprocessing,
    target: Targets,
    loss_weights: tuple[float, float, float],
    content_layer_weights: tuple[float, ...],
    style_layer_weights: tuple[float, ...],
    regions: GuidedRegions | None = None,
    circular: bool = False,
) -> LossTerms:
    """The total loss and its terms at ``image``, with the gradient from PyTorch autograd."""
    x = image.detach().clone().requires_grad_(True)
    content_layers, style_layers = tuple(target.content), tuple(target.gram)
    with CircularPadding(model, circular):
        features = model(preprocess(x, flavour), content_layers + style_layers)
    zero = torch.zeros((), dtype=x.dtype)
    content_terms = zip(content_layers, content_layer_weights, strict=True)
    content = sum((w * (features[n] - target.content[n]).square().mean() for n, w in content_terms), start=zero)
    style_terms = zip(style_layers, style_layer_weights, strict=True)
    if regions is None:
        style = sum((w * (gram(features[n]) - target.gram[n]).square().mean() for n, w in style_terms), start=zero)
    else:
        guides = layer_guides(model, regions.guides, style_layers)
        style = zero
        for n, w in style_terms:
            per_region = (guided_gram(features[n], guides[n]) - target.gram[n]).square().mean(dim=(1, 2))
            style = style + w * (regions.weights * per_region).sum()
    tv = total_variation(x, circular)
    alpha, beta, gamma = loss_weights
    total = alpha * content + beta * style + gamma * tv
    total.backward()
    return LossTerms(total.detach(), content.detach(), style.detach(), tv.detach(), x.grad)
