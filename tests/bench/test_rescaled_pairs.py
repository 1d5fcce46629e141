"""bench.schedules' pairs=rescaled lever: L-BFGS's pairs go up a scale with their curvature, and in order."""

from __future__ import annotations

import numpy as np
from nst_server.domain import optimise

from bench.schedules import carried_pairs, rescaled_pairs


def _smooth(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A field with only low frequencies (what survives a coarse scale), flattened like L-BFGS's vectors."""
    rows, cols = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    field = [np.sin(rng.uniform(1, 4) * rows + rng.uniform(0, 6)) * np.cos(rng.uniform(1, 4) * cols) for _ in "rgb"]
    return np.stack(field).astype(np.float32).ravel()


def test_a_rescaled_pair_keeps_its_curvature_and_a_gradient_its_scale() -> None:
    rng = np.random.default_rng(0)
    shape, size = (1, 3, 24, 32), (64, 48)  # (width, height): four times the pixels
    s, y = _smooth(rng, 24, 32), _smooth(rng, 24, 32)
    fine_s, fine_y = rescaled_pairs(s, y, shape, size)
    assert fine_s.shape == fine_y.shape == (3 * 48 * 64,)
    assert fine_s.dtype == fine_y.dtype == np.float32  # as _Pairs keeps them
    assert abs(float(np.dot(fine_s, fine_y)) / float(np.dot(s, y)) - 1.0) < 0.02
    assert abs(float(np.abs(fine_y).mean()) / float(np.abs(y).mean()) - 0.25) < 0.01  # a mean loss's gradient


def test_the_next_scale_starts_with_the_previous_scales_pairs_oldest_first() -> None:
    rng = np.random.default_rng(1)
    sizes = [(32, 24)]
    carried = carried_pairs(optimise._Pairs, sizes)
    coarse = carried(3, 3 * 24 * 32)
    assert len(coarse) == 0  # the first scale has nothing to carry
    for _ in range(4):  # a ring of 3: the first pair is overwritten
        row = coarse.next_row
        coarse.s[row] = _smooth(rng, 24, 32)
        coarse.y[row] = coarse.s[row] * 2.0  # positive curvature, so it is kept
        coarse.keep(row)
    oldest_first = [coarse.s[row].copy() for row in coarse._order]
    sizes.append((64, 48))
    fine = carried(3, 3 * 48 * 64)
    assert len(fine) == 3
    for row, s in zip(fine._order, oldest_first, strict=True):
        expected, _ = rescaled_pairs(s, s, (1, 3, 24, 32), (64, 48))
        np.testing.assert_array_equal(fine.s[row], expected)
    assert abs(fine.gamma - 4 * coarse.gamma) / (4 * coarse.gamma) < 0.02  # s.y / y.y: y is a quarter as long
