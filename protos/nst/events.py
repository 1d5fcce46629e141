"""The events of a Stylize stream, as plain Python values: one definition for the server and the client library.

``StylizeResponse`` in ``nst/v1/style_transfer.proto`` says what each event means on the wire; these are the
same events as frozen dataclasses. The server's domain emits them (``nst_server.domain.pipeline``) and
``nst_server.transport.codec`` encodes them; ``nst_client`` decodes the stream into them (``nst_client._convert``)
and hands them to its callers. This module imports neither protobuf nor gRPC, so the server's domain may use it.

The enums are ``StrEnum``s: a member equals its name in the API (``Optimizer.LBFGS == "lbfgs"``), the string the
client library's options take.
"""

from __future__ import annotations

import enum
import io
from dataclasses import dataclass, field

from PIL import Image


class Optimizer(enum.StrEnum):
    LBFGS = "lbfgs"
    ADAM = "adam"


class ImageFormat(enum.StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"


class StopReason(enum.StrEnum):
    """Why an optimisation (one scale of a job) ended."""

    BUDGET = "budget"  # its evaluations ran out
    CONVERGED = "converged"  # the loss stopped falling: min_improvement met, or no step along the direction lowers it
    UNSPECIFIED = "unspecified"  # a server older than the field did not say


@dataclass(frozen=True, slots=True)
class Losses:
    """Loss values of one image: the terms unweighted, ``total`` weighted."""

    total: float
    content: float
    style: float
    tv: float


@dataclass(frozen=True, slots=True)
class Queued:
    """The job waits for a free slot; ``position`` 1 is next."""

    job_id: str
    position: int


@dataclass(frozen=True, slots=True)
class Started:
    """The job got a slot; the values are the resolved ones (never "server default")."""

    job_id: str
    model: str
    width: int
    height: int
    max_evaluations: int
    optimizer: Optimizer
    device: str
    scales: int = 1  # what a server older than the field runs


@dataclass(frozen=True, slots=True)
class ScaleStarted:
    """One scale of a coarse-to-fine run began: ``scale`` counts from 1 (coarsest) to ``scales`` (output size)."""

    scale: int
    scales: int
    width: int
    height: int
    max_evaluations: int


@dataclass(frozen=True, slots=True)
class Progress:
    """One optimiser iteration finished (``iteration`` counts from 1, across scales)."""

    iteration: int
    evaluations: int
    losses: Losses
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class Preview:
    """The current image, mid-optimisation, encoded as ``format``."""

    iteration: int
    image: bytes
    format: ImageFormat

    def to_image(self) -> Image.Image:
        """The decoded image.

        Raises:
            PIL.UnidentifiedImageError: the bytes are not an image (a server bug).
        """
        return _decode(self.image)


@dataclass(frozen=True, slots=True)
class Timings:
    """Where a job's time went, in seconds."""

    queued_s: float = 0.0  # waiting for a slot
    warmup_s: float = 0.0  # preparing: decoding, resizing, targets, the first run at each size
    optimise_s: float = 0.0  # in the optimiser loop
    total_s: float = 0.0  # from receiving the request to sending the result
    evaluate_s: float = 0.0  # the part of optimise_s inside the model's runs of the loss graph
    step_s: float = 0.0  # the part inside the optimiser's step graphs on the device
    host_s: float = 0.0  # the rest of optimise_s: the server's Python-side work


@dataclass(frozen=True, slots=True)
class Result:
    """The final image, encoded as ``format``, and how it was reached."""

    image: bytes
    format: ImageFormat
    width: int
    height: int
    losses: Losses
    iterations: int
    evaluations: int  # at every scale, each counted once whatever its size
    timings: Timings = field(default_factory=Timings)
    stop_reason: StopReason = StopReason.UNSPECIFIED  # why the last scale ended
    full_size_evaluations: float = 0.0  # evaluations weighted by pixel count: what max_evaluations budgets

    def to_image(self) -> Image.Image:
        """The decoded image.

        Raises:
            PIL.UnidentifiedImageError: the bytes are not an image (a server bug).
        """
        return _decode(self.image)


Event = Queued | Started | ScaleStarted | Progress | Preview | Result


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()  # decode now, while the bytes are at hand, rather than lazily on first pixel access
    return image
