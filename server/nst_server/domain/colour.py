"""Colour preservation, after Gatys et al. 2016, "Preserving Color in Neural Artistic Style Transfer".

Two ways to keep the photo's colours: transfer luminance only (the style's luminance, matched to the photo's
mean and spread, gives the style targets; every returned image takes its chroma from the photo), or match each
style image's colour distribution (mean and covariance) to the photo's before its targets are taken. The same
matching, the other way round, gives the start image ``Init.MATCHED``: the photo in the paintings' palette.
Arrays follow the server's convention: float32 (1, 3, H, W), RGB in [0, 1]. YCbCr is full-range ITU-R BT.601
(JPEG's), with Cb = Cr = 0 for gray.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .evaluation import FloatArray

_RGB_TO_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float64
)
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR)
_EPSILON = 1e-5  # keeps the covariance of a flat image invertible


def _apply(matrix: np.ndarray, image: FloatArray) -> np.ndarray:
    applied: np.ndarray = np.einsum("ij,bjhw->bihw", matrix, image.astype(np.float64))  # einsum is typed Any
    return applied


def to_ycbcr(rgb: FloatArray) -> np.ndarray:
    """(1, 3, H, W) RGB to Y, Cb, Cr (float64; Y in [0, 1], Cb and Cr in [-0.5, 0.5])."""
    return _apply(_RGB_TO_YCBCR, rgb)


def _to_rgb(ycbcr: np.ndarray) -> FloatArray:
    rgb: FloatArray = np.clip(_apply(_YCBCR_TO_RGB, ycbcr), 0.0, 1.0).astype(np.float32)
    return rgb


def luminance_style(style: FloatArray, content: FloatArray) -> FloatArray:
    """The style as gray: its luminance, shifted and scaled to the content's mean and standard deviation."""
    style_y, content_y = to_ycbcr(style)[:, :1], to_ycbcr(content)[:, :1]
    matched = (style_y - style_y.mean()) * (content_y.std() / (style_y.std() + _EPSILON)) + content_y.mean()
    return np.repeat(np.clip(matched, 0.0, 1.0), 3, axis=1).astype(np.float32)


def with_chroma_of(image: FloatArray, photo: FloatArray) -> FloatArray:
    """``image``'s luminance with ``photo``'s chroma (same size): the result keeps the photo's colours."""
    ycbcr = to_ycbcr(image)
    ycbcr[:, 1:] = to_ycbcr(photo)[:, 1:]
    return _to_rgb(ycbcr)


def _sqrt_and_inverse_sqrt(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, vectors = np.linalg.eigh(covariance + _EPSILON * np.eye(3))
    roots = np.sqrt(np.maximum(values, _EPSILON))
    return (vectors * roots) @ vectors.T, (vectors / roots) @ vectors.T


def _moments(image: FloatArray) -> tuple[np.ndarray, np.ndarray]:
    """RGB mean (3, 1) and covariance (3, 3) of an image's pixels, in float64."""
    pixels = image[0].reshape(3, -1).astype(np.float64)
    return pixels.mean(axis=1, keepdims=True), np.cov(pixels)


def blended_moments(images: Sequence[FloatArray], weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the images' pixels pooled in proportion to ``weights`` (each image counts by its
    weight, whatever its pixel count): the palette of several styles blended as their targets are."""
    mean, second = np.zeros((3, 1)), np.zeros((3, 3))
    for image, weight in zip(images, weights, strict=True):
        image_mean, image_covariance = _moments(image)
        mean += weight * image_mean
        second += weight * (image_covariance + image_mean @ image_mean.T)
    total = float(sum(weights))
    mean, second = mean / total, second / total
    return mean, second - mean @ mean.T


def match_moments(image: FloatArray, mean: np.ndarray, covariance: np.ndarray) -> FloatArray:
    """``image`` with its RGB mean and covariance mapped onto ``mean`` and ``covariance``:
    x' = C^1/2 C_x^-1/2 (x - m_x) + m."""
    pixels = image[0].reshape(3, -1).astype(np.float64)
    image_mean, image_covariance = _moments(image)
    _, inverse_root = _sqrt_and_inverse_sqrt(image_covariance)
    root, _ = _sqrt_and_inverse_sqrt(covariance)
    mapped = root @ inverse_root @ (pixels - image_mean) + mean
    matched: FloatArray = np.clip(mapped, 0.0, 1.0).reshape(image.shape).astype(np.float32)
    return matched


def match_colours(style: FloatArray, content: FloatArray) -> FloatArray:
    """The style with its RGB mean and covariance mapped onto the content's (colour histogram matching)."""
    return match_moments(style, *_moments(content))
