"""Job targets: content features of the photo and the blended Gram matrices of the styles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nst.manifest import content_target_name, gram_target_name
from nst_server.domain.targets import job_targets
from nst_server.runtime.graphs import LossGraphs


@pytest.fixture(name="graphs", scope="module")
def _graphs(model_dir: Path) -> LossGraphs:
    return LossGraphs(model_dir, device="cpu")


def _image(seed: int, height: int = 40, width: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, height, width), dtype=np.float32)


def test_one_input_per_loss_layer(graphs: LossGraphs) -> None:
    """The targets are exactly the loss graph's content and Gram inputs."""
    rv = job_targets(graphs, _image(0), [_image(1)])
    manifest = graphs.manifest
    expected = {content_target_name(n) for n in manifest.content_layers}
    expected |= {gram_target_name(n) for n in manifest.style_layers}
    assert set(rv) == expected
    assert all(array.dtype == np.float32 for array in rv.values())


def test_a_style_twice_is_that_style(graphs: LossGraphs) -> None:
    """Blending a style with itself (equal weights, normalised) gives its own Gram matrices."""
    content, style = _image(0), _image(1, 56, 40)
    once, twice = job_targets(graphs, content, [style]), job_targets(graphs, content, [style, style])
    for name in once:
        np.testing.assert_allclose(twice[name], once[name], rtol=1e-6, atol=1e-9)


def test_blend_weights_are_normalised(graphs: LossGraphs) -> None:
    """Weights (3, 1) give 0.75 G(a) + 0.25 G(b) at every style layer."""
    content, a, b = _image(0), _image(1), _image(2)
    rv = job_targets(graphs, content, [a, b], blend=[3.0, 1.0])
    only_a, only_b = job_targets(graphs, content, [a]), job_targets(graphs, content, [b])
    for layer in graphs.manifest.style_layers:
        name = gram_target_name(layer)
        np.testing.assert_allclose(rv[name], 0.75 * only_a[name] + 0.25 * only_b[name], rtol=1e-5, atol=1e-9)
