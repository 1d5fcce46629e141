"""The domain of one stylisation job: its options (the one home of defaults) and the events it emits.

Nothing here knows about protobuf or gRPC; ``codec`` translates.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .manifest import LossWeights

FloatArray = npt.NDArray[np.float32]


class Optimizer(enum.Enum):
    LBFGS = "lbfgs"
    ADAM = "adam"


class Init(enum.Enum):
    CONTENT = "content"
    GRAY = "gray"
    NOISE = "noise"


class ImageFormat(enum.Enum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"


@dataclass(frozen=True, slots=True)
class Options:
    """Every knob of a job, with its documented default."""

    max_side_px: int = 512
    max_evaluations: int = 300
    optimizer: Optimizer = Optimizer.LBFGS
    learning_rate: float = 0.02  # Adam's step in [0, 1] pixel units
    loss_weights: LossWeights | None = None  # None: the model's defaults for its weights flavour
    init: Init = Init.CONTENT
    seed: int = 0
    preview_every: int = 0  # iterations between previews; 0 = none
    output_format: ImageFormat = ImageFormat.PNG
    lbfgs_history: int = 10


@dataclass(frozen=True, slots=True)
class Job:
    """A validated request: decoded images at their working size, and options."""

    job_id: str
    model: str
    content: FloatArray  # (1, 3, H, W), the output's size
    styles: tuple[FloatArray, ...]
    options: Options


@dataclass(frozen=True, slots=True)
class Losses:
    total: float
    content: float
    style: float
    tv: float


@dataclass(frozen=True, slots=True)
class Queued:
    job_id: str
    position: int  # 1 = next to start


@dataclass(frozen=True, slots=True)
class Started:
    job_id: str
    model: str
    width: int
    height: int
    max_evaluations: int
    optimizer: Optimizer
    device: str


@dataclass(frozen=True, slots=True)
class Progress:
    iteration: int
    evaluations: int
    losses: Losses
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class Preview:
    iteration: int
    image: bytes
    format: ImageFormat


@dataclass(frozen=True, slots=True)
class Timings:
    queued_s: float = 0.0
    warmup_s: float = 0.0
    optimise_s: float = 0.0
    total_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Result:
    image: bytes
    format: ImageFormat
    width: int
    height: int
    losses: Losses
    iterations: int
    evaluations: int
    timings: Timings = field(default_factory=Timings)


Event = Queued | Started | Progress | Preview | Result
