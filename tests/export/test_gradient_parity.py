"""The exported graphs against PyTorch autograd on the same weights, images and targets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from nst_export.parity import GRAD_TOLERANCE, LOSS_TOLERANCE, check_parity, random_images
from nst_export.vgg import VGG19Features
from nst_export.weights import init_random, load_into, read_state_dict
from nst_server.runtime.graphs import LossGraphs

pytestmark = pytest.mark.slow

SIZES = [(48, 48), (40, 72), (67, 45)]  # square, non-square, not a multiple of 16


def _torch_model(model_dir: Path, weights_file: Path) -> VGG19Features:
    manifest = LossGraphs(model_dir, device="cpu").manifest
    model = VGG19Features("relu5_1", manifest.pooling)
    if manifest.weights == "random":
        assert manifest.seed is not None
        init_random(model, manifest.seed)
    else:
        load_into(model, read_state_dict(weights_file), str(weights_file))
    return model


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("which", ["model_dir", "caffe_avg_model_dir"], ids=["max-imagenet", "avg-caffe"])
def test_loss_and_gradient_match_autograd(
    which: str, size: tuple[int, int], weights_file: Path, request: pytest.FixtureRequest
) -> None:
    """Each loss term within 2e-5 and the gradient within 5e-5 (relative) of PyTorch autograd."""
    model_dir = request.getfixturevalue(which)
    report = check_parity(model_dir, _torch_model(model_dir, weights_file), *random_images(*size, seed=11))
    assert report.grad <= GRAD_TOLERANCE, report
    assert max(report.total, report.content, report.style, report.tv, report.targets) <= LOSS_TOLERANCE, report


def test_max_pool_ties_follow_pytorch(model_dir: Path, weights_file: Path) -> None:
    """On a flat gray canvas every pooling window ties, and the gradient still matches PyTorch's first-max rule."""
    _, content, style = random_images(45, 61, seed=5)
    gray = torch.full((1, 3, 45, 61), 0.5)
    report = check_parity(model_dir, _torch_model(model_dir, weights_file), gray, content, style)
    assert report.grad <= GRAD_TOLERANCE, report


@pytest.mark.parametrize("size", [(32, 32), (32, 97), (67, 45)])
def test_gradient_has_the_image_shape(model_dir: Path, size: tuple[int, int]) -> None:
    """Any size from 32 px gives a gradient of exactly the image's shape and finite losses."""
    graphs = LossGraphs(model_dir, device="cpu")
    image = random_images(*size, seed=1)[0].numpy()
    evaluation = graphs.evaluator(size, graphs.targets(image), graphs.manifest.default_loss_weights)(image)
    assert evaluation.grad.shape == (1, 3, *size)
    assert torch.isfinite(torch.from_numpy(evaluation.grad)).all()
    assert evaluation.content == 0.0  # the image is its own content target
