"""Spatial control (Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style Transfer", section 4.1).

A job's masks become the loss graph's regions: each masked style is one region r with guide T_r (its mask at the
canvas's size) and its own Gram targets. The graph downsamples each guide to every style layer's grid and forms
the guided Gram matrices G_r = (F T_r)(F T_r)^T / (N sum_m T_r[m]^2) (``nst_export.onnx_graphs._guided_gram``
gives the formula and its gradient; nothing here repeats it). The style loss is sum_l w_l sum_r lambda_r
mean((G_r - A_r)^2), with

    lambda_r = mean(T_r^2) * b_r / mean_k(b_k)

(mean over the canvas's pixels, b the styles' blend weights). Dividing by the guide's mass makes G_r an average
over the region, so a region's term alone would push each of its pixels as hard as the whole image's term pushes
every pixel; the factor mean(T_r^2), the region's share of the image, undoes that: the style's pull on a pixel is
then the same whatever the size of its region, and one all-white mask is exactly the unmasked loss (lambda 1).
The blend weights, normalised to average 1, make one region's style stronger than another's.

The content-only region C is kept out of every guide (T_r = min(M_r, 1 - C)), and its pixels are held at the
photo's: the optimiser moves y, the image is x = C p + (1 - C) y, and the gradient it sees is (1 - C) dL/dx
(``Pinned``), the exact gradient of L(x(y)), so L-BFGS's line search stays consistent.

Masks are arrays (H, W) in [0, 1], resized without overshoot (bilinear weights are non-negative and sum to 1), so
masks that add up to at most 1 still do at every scale.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image

from .evaluation import Evaluation, Evaluator, FloatArray, WrappedEvaluator
from .job import Job
from .model import Regions

MAX_REGIONS = 4  # masked styles per job: each adds a guide and its Gram targets to every evaluation
OVERLAP_TOLERANCE = 0.04  # masks may add up to 1 + this at a pixel (8-bit rounding, lossy formats)
ASPECT_TOLERANCE = 0.02  # a mask's aspect ratio may differ from its image's by this fraction


def resize_mask(mask: FloatArray, size: tuple[int, int]) -> FloatArray:
    """``mask`` (H, W) resampled to ``size`` (width, height): each value a weighted mean of its neighbours."""
    if (mask.shape[1], mask.shape[0]) == size:
        return mask
    resized = np.asarray(Image.fromarray(mask, "F").resize(size, Image.Resampling.BILINEAR))
    clipped: FloatArray = np.clip(resized, 0.0, 1.0).astype(np.float32)
    return clipped


def has_regions(job: Job) -> bool:
    """Whether the loss takes regions: masks on the styles, or a content-only region (source masks alone do not:
    they only change the targets)."""
    return job.content_only is not None or any(style.mask is not None for style in job.styles)


def regions(job: Job, size: tuple[int, int]) -> Regions | None:
    """The loss graph's regions at ``size`` (width, height); None when the job has none (the plain loss).

    One region per masked style, in the styles' order; without style masks, one region for every style (their
    blended targets) that leaves out the content-only region.
    """
    if not has_regions(job):
        return None
    height, width = size[1], size[0]
    free = 1.0 - resize_mask(job.content_only, size) if job.content_only is not None else None
    masks = [style.mask for style in job.styles]
    if all(mask is None for mask in masks):
        assert free is not None
        guides = [free]
        blend = [1.0]
    else:
        guides = []
        for mask in masks:
            assert mask is not None  # codec: masks for every style or none
            guide = resize_mask(mask, size)
            guides.append(guide if free is None else np.minimum(guide, free))
        blend = [style.blend_weight for style in job.styles]
    stacked = np.stack(guides).astype(np.float32).reshape(len(guides), height, width)
    shares = np.mean(np.square(stacked, dtype=np.float64), axis=(1, 2))
    relative = np.asarray(blend, np.float64) / np.mean(blend)
    return Regions(stacked, (shares * relative).astype(np.float32))


def source_guides(job: Job, styles: Sequence[FloatArray]) -> list[FloatArray | None]:
    """Each style's source mask at the size of ``styles`` (its image at this scale), or None for all of it."""
    return [
        None if style.source_mask is None else resize_mask(style.source_mask, (image.shape[3], image.shape[2]))
        for style, image in zip(job.styles, styles, strict=True)
    ]


class Pinned(WrappedEvaluator):
    """An ``Evaluator`` over y for the image x = C p + (1 - C) y: the content-only region C held at the photo p.

    Returns L(x) and (1 - C) dL/dx, the gradient with respect to y, in its own buffer.
    """

    def __init__(self, evaluate: Evaluator, photo: FloatArray, held: FloatArray) -> None:
        super().__init__(evaluate)
        held4 = held.reshape(1, 1, *held.shape)
        self._photo_part = (held4 * photo).astype(np.float32)
        self._free = (1.0 - held4).astype(np.float32)
        self._image = np.zeros(evaluate.shape, np.float32)
        self._grad = np.zeros(evaluate.shape, np.float32)

    def image(self, y: npt.NDArray[np.floating]) -> FloatArray:
        """x = C p + (1 - C) y, a new array."""
        x: FloatArray = (self._photo_part + self._free * y.reshape(self.shape)).astype(np.float32)
        return x

    def __call__(self, image: npt.NDArray[np.floating]) -> Evaluation:
        """Evaluate at y = ``image`` (the optimiser's variable)."""
        np.multiply(self._free, image.reshape(self.shape), out=self._image, casting="same_kind")
        self._image += self._photo_part
        evaluation = self.inner(self._image)
        np.multiply(evaluation.grad, self._free, out=self._grad)
        return dataclasses.replace(evaluation, grad=self._grad)
