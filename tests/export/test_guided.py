"""Guided Gram matrices (spatial control) and the circular-padding graphs, against the plain graph and autograd."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from nst import manifest as mf
from nst_export.onnx_graphs import build_loss_graph, build_targets_graph
from nst_export.parity import GRAD_TOLERANCE, LOSS_TOLERANCE, check_parity, random_images
from nst_export.vgg import VGG19Features
from nst_export.weights import init_random
from nst_server.domain.model import Regions
from nst_server.runtime.graphs import LossGraphs
from nst_server.runtime.sessions import session_options

pytestmark = pytest.mark.slow

SIZES = [(48, 48), (40, 72), (67, 45)]  # square, non-square, not a multiple of 16


@pytest.fixture(name="torch_model", scope="module")
def _torch_model(model_dir: Path) -> VGG19Features:
    manifest = LossGraphs(model_dir, device="cpu").manifest
    assert manifest.weights == "random"
    assert manifest.seed is not None
    model = VGG19Features("relu5_1", manifest.pooling)
    init_random(model, manifest.seed)
    return model


@pytest.fixture(name="plain_sessions", scope="module")
def _plain_sessions(
    model_dir: Path, torch_model: VGG19Features, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    """The unguided (plain Gatys) targets and loss graphs of the same weights, in the server's session options."""
    manifest = LossGraphs(model_dir, device="cpu").manifest
    directory = tmp_path_factory.mktemp("plain")
    sessions = []
    for name, graph in (
        ("targets.onnx", build_targets_graph(torch_model, manifest, guided=False)),
        ("loss.onnx", build_loss_graph(torch_model, manifest, guided=False)),
    ):
        onnx.save(graph, directory / name)
        options = session_options(0)
        sessions.append(ort.InferenceSession(str(directory / name), options, providers=["CPUExecutionProvider"]))
    return sessions[0], sessions[1]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_no_guides_give_exactly_the_plain_loss_and_gradient(
    model_dir: Path, plain_sessions: tuple[ort.InferenceSession, ort.InferenceSession], size: tuple[int, int]
) -> None:
    """Without regions (one all-ones guide, weight 1) targets, every loss term and the gradient are bit-identical."""
    plain_targets, plain_loss = plain_sessions
    graphs = LossGraphs(model_dir, device="cpu")
    image, content, style = (t.numpy() for t in random_images(*size, seed=4))
    names = [o.name for o in plain_targets.get_outputs()]
    of_content = zip(names, plain_targets.run(names, {mf.IMAGE_INPUT: content}), strict=True)
    of_style = zip(names, plain_targets.run(names, {mf.IMAGE_INPUT: style}), strict=True)
    want_targets = {k: v for k, v in of_content if k.startswith("content")}
    want_targets |= {k: v for k, v in of_style if k.startswith("gram")}
    got_targets = graphs.targets(content) | {k: v for k, v in graphs.targets(style).items() if k.startswith("gram")}
    assert set(got_targets) == set(want_targets)
    for name, array in want_targets.items():
        np.testing.assert_array_equal(got_targets[name], array, err_msg=name)

    weights = graphs.manifest.default_loss_weights
    feeds = dict(want_targets)
    feeds[mf.IMAGE_INPUT] = image
    for name, value in ((mf.CONTENT_WEIGHT_INPUT, weights.content), (mf.STYLE_WEIGHT_INPUT, weights.style)):
        feeds[name] = np.array(value, np.float32)
    feeds[mf.TV_WEIGHT_INPUT] = np.array(weights.tv, np.float32)
    feeds[mf.CONTENT_LAYER_WEIGHTS_INPUT] = np.array([1.0], np.float32)
    feeds[mf.STYLE_LAYER_WEIGHTS_INPUT] = np.full(5, 0.2, np.float32)
    want = dict(zip(mf.LOSS_OUTPUTS, plain_loss.run(list(mf.LOSS_OUTPUTS), feeds), strict=True))
    got = graphs.evaluator(size, want_targets, weights)(image)
    assert got.style > 0.0
    for name, value in zip(mf.LOSS_OUTPUTS, (got.loss, got.content, got.style, got.tv, got.grad), strict=True):
        np.testing.assert_array_equal(np.float32(value), want[name], err_msg=name)


@pytest.mark.parametrize(
    ("guided", "circular", "size"),
    [(True, False, size) for size in SIZES]
    + [(False, True, (48, 48)), (False, True, (67, 45)), (True, True, (40, 72))],
    ids=lambda v: f"{v[0]}x{v[1]}" if isinstance(v, tuple) else str(v),
)
def test_guided_and_circular_match_autograd(
    model_dir: Path, torch_model: VGG19Features, size: tuple[int, int], guided: bool, circular: bool
) -> None:
    """Two soft regions with their own style-side guides and weights, or circular padding: within the tolerances."""
    report = check_parity(model_dir, torch_model, *random_images(*size, seed=12), guided=guided, circular=circular)
    assert report.grad <= GRAD_TOLERANCE, report
    assert max(report.total, report.content, report.style, report.tv, report.targets) <= LOSS_TOLERANCE, report


def test_a_region_only_moves_pixels_it_can_see(model_dir: Path) -> None:
    """With style weight only and a guide on the left quarter, the far right of the gradient is exactly zero."""
    graphs = LossGraphs(model_dir, device="cpu")
    height, width = 48, 320  # relu5_1's receptive field is far narrower than the right three quarters
    image, content, style = (t.numpy() for t in random_images(height, width, seed=2))
    guide = np.zeros((1, height, width), np.float32)
    guide[..., : width // 4] = 1.0
    targets = graphs.targets(content) | {k: v for k, v in graphs.targets(style).items() if k.startswith("gram")}
    evaluate = graphs.evaluator(
        (height, width), targets, mf.LossWeights(0.0, 1e6, 0.0), regions=Regions(guide, np.ones(1, np.float32))
    )
    grad = evaluate(image).grad
    assert np.abs(grad[..., : width // 4]).max() > 0.0
    assert np.abs(grad[..., width // 2 :]).max() == 0.0


def test_style_guide_selects_part_of_the_style(model_dir: Path) -> None:
    """A style-side guide over one half gives that half's Gram matrices, not the whole image's."""
    graphs = LossGraphs(model_dir, device="cpu")
    left = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).numpy()
    right = np.full_like(left, 0.2)
    both = np.concatenate([left, right], axis=3)
    guide = np.zeros((64, 128), np.float32)
    guide[:, :64] = 1.0
    rv, whole, alone = graphs.targets(both, guide), graphs.targets(both), graphs.targets(left)
    name = mf.gram_target_name("relu1_1")
    # Only relu1_1 sees no further than one pixel across the cut, so it matches the left image alone closely.
    near = np.abs(rv[name] - alone[name]).mean()
    assert near < 0.1 * np.abs(whole[name] - alone[name]).mean()
