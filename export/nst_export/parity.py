"""Check exported graphs against PyTorch autograd: the same weights, image and targets must agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nst.manifest import content_target_name, gram_target_name
from nst_server.config import CudaSettings, Device
from nst_server.domain.model import Regions
from nst_server.runtime.graphs import LossGraphs

from . import reference
from .vgg import VGG19Features

# float32 on both sides; the graphs reach about 1e-6. Relative bounds in the 2-norm:
# ||g_onnx - g_torch|| / ||g_torch|| for the gradient, |L_onnx - L_torch| / |L_torch| for each loss term.
GRAD_TOLERANCE = 5e-5
LOSS_TOLERANCE = 2e-5


def relative_error(value: np.ndarray | float, expected: torch.Tensor) -> float:
    """||value - expected|| / ||expected|| (0 when both are 0)."""
    want = expected.detach().double().numpy()
    diff = float(np.linalg.norm(np.asarray(value, np.float64) - want))
    scale = float(np.linalg.norm(want))
    return diff / scale if scale else diff


@dataclass(frozen=True, slots=True)
class ParityReport:
    """Relative errors of the ONNX graphs against the PyTorch reference."""

    targets: float  # worst over content features and Gram matrices
    total: float
    content: float
    style: float
    tv: float
    grad: float

    @property
    def passed(self) -> bool:
        losses = (self.targets, self.total, self.content, self.style, self.tv)
        return self.grad <= GRAD_TOLERANCE and max(losses) <= LOSS_TOLERANCE

    def __str__(self) -> str:
        return (
            f"gradient {self.grad:.2e} (max {GRAD_TOLERANCE:.0e}), losses total {self.total:.2e} content "
            f"{self.content:.2e} style {self.style:.2e} tv {self.tv:.2e}, targets {self.targets:.2e} "
            f"(max {LOSS_TOLERANCE:.0e})"
        )


@dataclass(frozen=True, slots=True)
class _Guides:
    """A two-region case: soft region guides over the image, a different style-side guide per region."""

    regions: reference.GuidedRegions
    style: tuple[torch.Tensor, torch.Tensor]


def _guides(image: torch.Tensor, style: torch.Tensor, seed: int) -> _Guides:
    generator = torch.Generator().manual_seed(seed + 1)
    height, width = image.shape[2:]
    left = torch.rand(height, width, generator=generator) * (torch.arange(width) < width // 2)
    regions = torch.stack([left, 1.0 - left])  # soft, overlapping nowhere beyond 1
    style_guides = torch.rand(2, *style.shape[2:], generator=generator)
    return _Guides(reference.GuidedRegions(regions, torch.tensor([0.7, 1.3])), (style_guides[0], style_guides[1]))


def check_parity(
    model_dir: Path,
    model: VGG19Features,
    image: torch.Tensor,
    content: torch.Tensor,
    style: torch.Tensor,
    guided: bool = False,
    circular: bool = False,
    device: Device = "cpu",
    cuda: CudaSettings | None = None,
) -> ParityReport:
    """Compare the graphs in ``model_dir`` with ``reference`` at ``image``, targets from ``content``/``style``.

    ``guided`` checks spatial control: two soft regions, each with its own style-side guide and weight.
    ``circular`` checks the circular-padding graphs. ``device`` is onnxruntime's (bench/gpu.sh checks on "cuda"),
    with ``cuda`` for its provider (the tolerances hold with TF32 off, the default).
    """
    graphs = LossGraphs(model_dir, device=device, cuda=cuda)
    manifest = graphs.manifest
    layers = (manifest.content_layers, manifest.style_layers)
    flavour = manifest.preprocessing
    content_ref = reference.targets(model, content, flavour, *layers, circular=circular)
    content_onnx = graphs.targets(content.numpy(), circular=circular)
    target_errors = [relative_error(content_onnx[content_target_name(n)], t) for n, t in content_ref.content.items()]
    guides = _guides(image, style, seed=int(image.shape[2] * 1000 + image.shape[3])) if guided else None
    style_guides = guides.style if guides is not None else (None,)
    grams: dict[str, list[torch.Tensor]] = {n: [] for n in manifest.style_layers}
    for guide in style_guides:
        style_ref = reference.targets(model, style, flavour, *layers, guide=guide, circular=circular)
        style_onnx = graphs.targets(style.numpy(), None if guide is None else guide.numpy(), circular)
        target_errors += [relative_error(style_onnx[gram_target_name(n)], t) for n, t in style_ref.gram.items()]
        for n, t in style_ref.gram.items():
            grams[n].append(t)
    expected = reference.Targets(content_ref.content, {n: torch.stack(ts) for n, ts in grams.items()})

    weights = manifest.default_loss_weights
    n_style = len(manifest.style_layers)
    # Uneven per-layer weights, so that a layer mixed up with another would show.
    content_layer_weights = tuple(1.0 + 0.5 * i for i in range(len(manifest.content_layers)))
    style_layer_weights = tuple((i + 1) / (n_style * (n_style + 1) / 2) for i in range(n_style))
    want = reference.gatys_loss(
        model,
        image,
        flavour,
        expected,
        (weights.content, weights.style, weights.tv),
        content_layer_weights,
        style_layer_weights,
        guides.regions if guides is not None else None,
        circular,
    )
    feeds = {content_target_name(n): t.numpy() for n, t in expected.content.items()}
    feeds |= {gram_target_name(n): t.numpy() for n, t in expected.gram.items()}
    regions = None
    if guides is not None:
        regions = Regions(guides.regions.guides.numpy(), guides.regions.weights.numpy())
    evaluate = graphs.evaluator(
        (image.shape[2], image.shape[3]),
        feeds,
        weights,
        content_layer_weights,
        style_layer_weights,
        regions,
        circular,
    )
    got = evaluate(image.numpy())
    assert want.grad is not None
    return ParityReport(
        targets=max(target_errors),
        total=relative_error(got.loss, want.total),
        content=relative_error(got.content, want.content),
        style=relative_error(got.style, want.style),
        tv=relative_error(got.tv, want.tv),
        grad=relative_error(got.grad, want.grad),
    )


def random_images(height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded image, content and (differently sized) style image, RGB in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, height, width, generator=generator)
    content = torch.rand(1, 3, height, width, generator=generator)
    style = torch.rand(1, 3, height + 7, width + 3, generator=generator)
    return image, content, style
