"""Colour statistics: the matching behind colour preservation and the colour-matched start image."""

from __future__ import annotations

import numpy as np
import pytest
from nst_server.domain import colour
from nst_server.domain.evaluation import FloatArray


def _image(seed: int, mean: tuple[float, float, float], spread: float, size: tuple[int, int] = (40, 30)) -> FloatArray:
    """Correlated colours around ``mean``, well inside [0, 1] so that no clipping disturbs the moments."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(3, 3)) * spread
    pixels = mixing @ rng.normal(size=(3, size[0] * size[1])) + np.reshape(mean, (3, 1))
    image: FloatArray = np.clip(pixels, 0, 1).reshape(1, 3, size[1], size[0]).astype(np.float32)
    return image


def _moments(image: FloatArray) -> tuple[np.ndarray, np.ndarray]:
    pixels = image[0].reshape(3, -1).astype(np.float64)
    return pixels.mean(axis=1), np.cov(pixels)


def test_match_moments_gives_the_asked_mean_and_covariance() -> None:
    photo, painting = _image(0, (0.5, 0.45, 0.4), 0.08), _image(1, (0.45, 0.5, 0.55), 0.08)
    mean, covariance = _moments(painting)
    matched = colour.match_moments(photo, mean.reshape(3, 1), covariance)
    got_mean, got_covariance = _moments(matched)
    np.testing.assert_allclose(got_mean, mean, atol=1e-4)
    # Within 1% of the largest entry (0.017): both covariances are regularised by 1e-5 I before their roots.
    np.testing.assert_allclose(got_covariance, covariance, atol=2e-4)
    assert np.abs(got_covariance - _moments(photo)[1]).max() > 10 * 2e-4  # the photo's own were far off
    assert matched.shape == photo.shape
    assert matched.dtype == np.float32


def test_match_colours_is_match_moments_onto_the_contents() -> None:
    style, content = _image(2, (0.6, 0.5, 0.3), 0.05), _image(3, (0.4, 0.5, 0.5), 0.03)
    mean, covariance = _moments(content)
    expected = colour.match_moments(style, mean.reshape(3, 1), covariance)
    np.testing.assert_allclose(colour.match_colours(style, content), expected, atol=1e-6)


def test_blended_moments_pool_the_images_by_weight() -> None:
    """Equal weights on equal-sized images: the moments of their pixels together (up to np.cov's n - 1)."""
    a, b = _image(4, (0.3, 0.3, 0.3), 0.05), _image(5, (0.7, 0.6, 0.5), 0.03)
    mean, covariance = colour.blended_moments([a, b], [2.0, 2.0])
    pooled = np.concatenate([a, b], axis=3)
    expected_mean, expected_covariance = _moments(pooled)
    np.testing.assert_allclose(mean[:, 0], expected_mean, atol=1e-9)
    np.testing.assert_allclose(covariance, expected_covariance, rtol=0.01, atol=1e-6)


def test_blended_moments_of_one_image_are_its_own() -> None:
    image = _image(6, (0.5, 0.5, 0.5), 0.05)
    mean, covariance = colour.blended_moments([image], [0.3])
    expected_mean, expected_covariance = _moments(image)
    np.testing.assert_allclose(mean[:, 0], expected_mean, atol=1e-9)
    np.testing.assert_allclose(covariance, expected_covariance, rtol=1e-9)


@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 1.0)])
def test_a_zero_weight_style_does_not_colour_the_palette(weights: tuple[float, float]) -> None:
    a, b = _image(7, (0.2, 0.3, 0.4), 0.04), _image(8, (0.7, 0.6, 0.5), 0.04)
    mean, _ = colour.blended_moments([a, b], weights)
    np.testing.assert_allclose(mean[:, 0], _moments(a if weights[0] else b)[0], atol=1e-9)
