"""The domain of one stylisation job: its options (the one home of defaults) and its validated inputs.

The events a job emits are ``nst.events``', which the client library shares. Nothing here knows about protobuf
or gRPC; ``codec`` translates.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from nst.events import ImageFormat, Optimizer
from nst.manifest import LossWeights

from .evaluation import FloatArray


class Init(enum.Enum):
    CONTENT = "content"
    GRAY = "gray"
    NOISE = "noise"
    IMAGE = "image"  # the caller's own starting image
    # The photo with its colour mean and covariance mapped onto the styles' (blended by their weights, as their
    # targets see them): it starts with the painting's palette, so the evaluations go to strokes and texture.
    MATCHED = "matched"


class ColourPreservation(enum.Enum):
    NONE = "none"
    LUMINANCE = "luminance"  # style from the styles' luminance; chroma from the content
    HISTOGRAM = "histogram"  # styles' colours mapped to the content's mean and covariance


@dataclass(frozen=True, slots=True)
class Options:
    """Every knob of a job, with its documented default."""

    max_side_px: int = 512
    max_evaluations: int = 300
    optimizer: Optimizer = Optimizer.LBFGS
    learning_rate: float = 0.02  # Adam's step in [0, 1] pixel units
    loss_weights: LossWeights | None = None  # None: the model's defaults for its weights flavour
    init: Init = Init.MATCHED  # when the request leaves it unset: default_init(has_content, has_style)
    seed: int = 0
    preview_every: int = 0  # iterations between previews; 0 = none
    output_format: ImageFormat = ImageFormat.PNG
    lbfgs_history: int = 10
    colour_preservation: ColourPreservation = ColourPreservation.NONE
    scales: int = 0  # coarse-to-fine steps, sqrt(2) apart in size; 0 = one, or the server's with coarse_to_fine
    coarse_evaluations: int = 0  # budget of each scale but the last, with scales set; 0 = max_evaluations
    min_improvement: float = 0.0  # stop a scale when the loss falls by less than this over 10 iterations; 0 = off
    content_layers: tuple[str, ...] = ()  # subset of the model's; () = all
    style_layers: tuple[str, ...] = ()  # subset of the model's; () = all
    style_layer_weights: tuple[float, ...] = ()  # one per style layer, normalised; () = equal
    tileable: bool = False  # circular padding everywhere: the output wraps around without a seam
    coarse_to_fine: bool = False  # the server's coarse-to-fine schedule (schedule.schedule), with scales unset


def default_init(has_content: bool, has_style: bool) -> Init:
    """Where a job starts when the request does not say: the photo in the styles' palette when there is a photo to
    start from and a style to move it towards; otherwise (texture synthesis, content reconstruction) seeded noise.

    Gatys et al. start from white noise (and, in their Fig. 6, compare the photo and the painting as starts).
    The photo in the painting's colours reached scipy L-BFGS-B's loss soonest of the starts and schedules
    measured, on the median over three pairs of both representative losses; on one pair it ended 21% above the
    photo's start, which ``Init.CONTENT`` keeps (BENCHMARKS.md, "Time to quality")."""
    return Init.MATCHED if has_content and has_style else Init.NOISE


@dataclass(frozen=True, slots=True)
class Style:
    """A decoded style image at its size for the last scale, and its share of the blended targets.

    Spatial control (``spatial``): ``mask`` (H, W) in [0, 1] at the output's size says where this style applies;
    ``source_mask`` (h, w) at the style image's size which part of it counts. None: everywhere, all of it.
    """

    image: FloatArray
    blend_weight: float = 1.0
    mask: FloatArray | None = None
    source_mask: FloatArray | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """A validated request: decoded images at their working size, and options."""

    job_id: str
    model: str
    size: tuple[int, int]  # (width, height) of the output
    content: FloatArray | None  # (1, 3, H, W) at the output's size; None for texture synthesis
    styles: tuple[Style, ...]  # empty for content reconstruction
    options: Options
    init_image: FloatArray | None = None  # at the output's size, for Init.IMAGE
    content_only: FloatArray | None = None  # (H, W) in [0, 1] at the output's size: where no style applies
