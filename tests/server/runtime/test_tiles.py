"""Exact tiled evaluation: the tiles' loss and gradient against the whole image's, and the tile plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nst import manifest as mf
from nst_server.domain.errors import Cancelled, InvalidRequest
from nst_server.domain.evaluation import Evaluator
from nst_server.domain.model import Regions
from nst_server.runtime.graphs import LossGraphs
from nst_server.runtime.tiles import TiledEvaluator, plan

# The bounds: loss within 1e-5 and gradient within 1e-4, relative.
LOSS_TOLERANCE = 1e-5
GRAD_TOLERANCE = 1e-4
HALO, ALIGN = 160, 16


def _relative(got: np.ndarray | float, want: np.ndarray | float) -> float:
    want64 = np.asarray(want, np.float64)
    return float(np.linalg.norm(np.asarray(got, np.float64) - want64) / np.linalg.norm(want64))


def _images(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.random((1, 3, height, width), dtype=np.float32)
    # A smooth content photo (random pixels would make every feature noise) and a smaller style image.
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    content = 0.5 + 0.4 * np.sin(rows[None, None] / 37.0 + np.arange(3)[None, :, None, None]) * np.cos(cols / 23.0)
    # A style unlike the noisy image (fine stripes): its Gram matrices differ from the image's by far more than
    # float32 rounding, so the style term compares the two evaluations rather than their rounding.
    rows, cols = np.mgrid[0:150, 0:210].astype(np.float32)
    channel = np.arange(3, dtype=np.float32)[None, :, None, None]
    style = 0.5 + 0.45 * np.sin(cols / 3.0 + 2.0 * channel) * np.cos(rows / 7.0)
    return image, content.astype(np.float32), style.astype(np.float32)


@pytest.mark.parametrize(
    ("height", "width"), [(1, 1), (16, 16), (100, 37), (768, 1024), (523, 745)], ids=lambda v: str(v)
)
def test_plan_partitions_the_image_on_the_pooling_grid(height: int, width: int) -> None:
    """Inner regions cover every pixel once; every origin is on the 16 px grid; halos stop at the image."""
    owner = np.zeros((height, width), np.int32)
    for tile in plan(height, width, 256, HALO, ALIGN):
        top, left, bottom, right = tile.inner
        owner[top:bottom, left:right] += 1
        assert top % ALIGN == left % ALIGN == tile.outer[0] % ALIGN == tile.outer[1] % ALIGN == 0
        assert tile.outer[0] == max(0, top - HALO)
        assert tile.outer[1] == max(0, left - HALO)
        assert tile.outer[2] == min(height, bottom + HALO)
        assert tile.outer[3] == min(width, right + HALO)
        assert bottom - top <= 256
        assert right - left <= 256
    assert (owner == 1).all()


@pytest.mark.parametrize("tile_px", [0, 8, 24, 100])
def test_plan_refuses_tiles_off_the_grid(tile_px: int) -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        plan(512, 512, tile_px, HALO, ALIGN)


def test_export_records_the_halo_of_relu5_1(model_dir: Path) -> None:
    """The receptive field to relu5_1 is 156 px: a halo of 155, rounded up to the 16 px grid."""
    manifest = LossGraphs(model_dir, device="cpu").manifest
    assert (manifest.tile_halo_px, manifest.tile_align_px) == (HALO, ALIGN)


def _compare(
    model_dir: Path, height: int, width: int, tile_px: int, seed: int, loss_tolerance: float = LOSS_TOLERANCE
) -> None:
    whole = LossGraphs(model_dir, device="cpu")
    tiled = LossGraphs(model_dir, device="cpu", tile_px=tile_px)
    image, content, style = _images(height, width, seed)
    # Content targets at the image's size go through the tile forward graph; style targets stay whole.
    targets = whole.targets(content)
    targets |= {k: v for k, v in whole.targets(style).items() if k.startswith("gram")}
    tiled_targets = tiled.targets(content)
    for name, value in tiled_targets.items():
        if name.startswith("content"):
            assert _relative(value, targets[name]) <= LOSS_TOLERANCE, name
    tiled_targets |= {k: v for k, v in tiled.targets(style).items() if k.startswith("gram")}
    weights = whole.manifest.default_loss_weights
    # Uneven per-layer weights, so that a layer mixed up with another would show.
    style_layer_weights = (0.1, 0.3, 0.2, 0.25, 0.15)
    reference = whole.evaluator((height, width), targets, weights, None, style_layer_weights)
    assert isinstance(reference, Evaluator)
    want = reference(image)
    evaluate = tiled.evaluator((height, width), tiled_targets, weights, None, style_layer_weights)
    assert isinstance(evaluate, TiledEvaluator)
    assert evaluate.tiles > 1
    got = evaluate(image)
    for term in ("loss", "content", "style", "tv"):
        assert _relative(getattr(got, term), getattr(want, term)) <= loss_tolerance, term
    assert got.grad.shape == want.grad.shape
    assert _relative(got.grad, want.grad) <= GRAD_TOLERANCE
    # The border rows and columns, where the zero padding is, agree as well as the rest.
    for edge in (np.s_[:, :, :8], np.s_[:, :, -8:], np.s_[:, :, :, :8], np.s_[:, :, :, -8:]):
        assert _relative(got.grad[edge], want.grad[edge]) <= GRAD_TOLERANCE


@pytest.mark.slow  # whole-image and tiled runs at up to 1024x768: minutes on 2 cores
def test_tiled_matches_whole_at_1024x768_with_256_px_tiles(model_dir: Path) -> None:
    _compare(model_dir, 768, 1024, 256, seed=1)


@pytest.mark.slow  # whole-image and tiled runs at up to 1024x768: minutes on 2 cores
def test_tiled_matches_whole_off_the_16_px_grid(model_dir: Path) -> None:
    """523x745: the last tiles end off the grid, where floor-mode pooling drops rows and columns."""
    _compare(model_dir, 523, 745, 256, seed=2)


@pytest.mark.slow  # whole-image and tiled runs at up to 1024x768: minutes on 2 cores
def test_tiled_matches_whole_with_average_pooling_and_caffe_inputs(caffe_avg_model_dir: Path) -> None:
    """Losses within 2e-5, the export check's bound: with Caffe's 0-255 inputs the whole-image graph's own float32
    content mean is about 1.1e-5 off float64 (the tiles, summing per tile, came closer), so 1e-5 tests its error."""
    _compare(caffe_avg_model_dir, 480, 290, 128, seed=3, loss_tolerance=2e-5)


@pytest.mark.slow  # whole-image and tiled runs at up to 1024x768: minutes on 2 cores
def test_tiled_evaluation_stops_between_tiles(model_dir: Path) -> None:
    """A cancelled job stops within one tile: the check runs before every tile's run."""
    graphs = LossGraphs(model_dir, device="cpu", tile_px=128)
    image, content, style = _images(300, 460, seed=4)
    targets = graphs.targets(content) | {k: v for k, v in graphs.targets(style).items() if k.startswith("gram")}
    checks = []

    def should_stop() -> bool:
        checks.append(1)
        return len(checks) > 3

    evaluate = graphs.evaluator((300, 460), targets, graphs.manifest.default_loss_weights, should_stop=should_stop)
    with pytest.raises(Cancelled):
        evaluate(image)
    assert len(checks) == 4


@pytest.mark.slow  # seconds: jobs at and above the tile size
def test_images_that_fit_one_tile_with_its_halo_stay_whole(model_dir: Path) -> None:
    """Up to 256 + 2 x 160 px on the longer side an image costs no more memory whole than one tile: it stays whole."""
    graphs = LossGraphs(model_dir, device="cpu", tile_px=256)
    assert graphs.whole_max_side_px == 256 + 2 * HALO
    assert not graphs.tiled((256 + 2 * HALO, 400))
    assert graphs.tiled((16, 256 + 2 * HALO + 1))
    assert LossGraphs(model_dir, device="cpu").whole_max_side_px is None  # no tiling: whole at any size


def test_model_without_tile_graphs_is_refused_when_tiling(model_dir: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    for name in (mf.TARGETS_FILE, mf.LOSS_FILE):
        (old / name).symlink_to(model_dir / name)
    LossGraphs(old, device="cpu")  # whole images only: fine
    with pytest.raises(ValueError, match="no tile graphs"):
        LossGraphs(old, device="cpu", tile_px=512)


@pytest.mark.slow  # seconds: jobs at and above the tile size
def test_masks_and_circular_padding_are_refused_above_the_tile_size(model_dir: Path) -> None:
    """Region guides and circular padding hold whole-image state the tile graphs do not take: a clear refusal."""
    graphs = LossGraphs(model_dir, device="cpu", tile_px=64)  # whole up to 64 + 2 x 160 = 384 px
    image = np.zeros((1, 3, 400, 48), np.float32)
    targets = graphs.targets(image)
    weights = graphs.manifest.default_loss_weights
    with pytest.raises(
        InvalidRequest, match=r"masks \(region guides\): only for images the server evaluates whole, up to 384 px"
    ):
        graphs.evaluator((400, 48), targets, weights, regions=Regions.everywhere((400, 48)))
    with pytest.raises(InvalidRequest, match="tileable"):
        graphs.evaluator((400, 48), targets, weights, circular=True)
    with pytest.raises(InvalidRequest, match="48x400"):
        graphs.targets(image, guide=np.ones((400, 48), np.float32))
    # At or below the whole-image size both work as before.
    small = np.zeros((1, 3, 384, 48), np.float32)
    graphs.evaluator((384, 48), graphs.targets(small), weights, regions=Regions.everywhere((384, 48)))


def test_tiled_targets_stop_between_tiles(model_dir: Path) -> None:
    """The targets of a large photo or style are tiles too, and a cancelled job stops there as well."""
    graphs = LossGraphs(model_dir, device="cpu", tile_px=64)
    with pytest.raises(Cancelled):
        graphs.targets(np.zeros((1, 3, 100, 400), np.float32), should_stop=lambda: True)
