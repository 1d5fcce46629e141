"""The library's values: its options, style images, what the server runs, and the one error type.

Plain frozen dataclasses, so that callers never handle generated protobuf types. The events of a job are
``nst.events``', the same values the server emits; the package re-exports them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import grpc
import numpy as np
from PIL import Image

# An image as the library takes it: a path, encoded bytes, a PIL image or an HxWx3 array.
ImageInput: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | np.ndarray[Any, Any]

OptimizerName = Literal["lbfgs", "adam"]
InitName = Literal["content", "gray", "noise", "image", "matched"]
ColourPreservationName = Literal["none", "luminance", "histogram"]
ImageFormatName = Literal["png", "jpeg", "webp"]
HealthStatus = Literal["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]


class StyleTransferError(Exception):
    """A call failed: ``code`` is the gRPC status (branch on it), ``message`` what the server or gRPC said."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> StyleTransferError:
        """The error for a failed gRPC call (a ``grpc.Call``, which every RpcError from a stub is)."""
        # The stubs type RpcError and Call apart, so that their mix (what a stub raises) reads as impossible to mypy.
        call: Any = error
        code = call.code() if isinstance(call, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = call.details() if isinstance(call, grpc.Call) else None
        return cls(details or code.name, code)

    def __repr__(self) -> str:
        return f"StyleTransferError({self.message!r}, {self.code})"


@dataclass(frozen=True, slots=True)
class Style:
    """A style image with its own blend weight, scale and masks; None leaves the server default.

    ``image`` is anything ``stylize`` takes as an image, and so are the masks. ``blend_weight`` (>= 0, default 1)
    weights this style's Gram matrices when blending several styles; ``scale`` (0 < scale <= 4, default 1)
    resizes the style relative to the output.

    Spatial control (Gatys et al. 2017): ``mask`` is a greyscale image at the output's aspect ratio, white where
    this style applies, black where it does not, in between weaker (soft masks of several styles that add up to
    1 blend them). Give masks for every style or for none; at most 4; at every pixel they (and the options'
    ``content_only_mask``) may add up to at most 1. With masks, ``blend_weight`` scales this style's region.
    ``source_mask``, at the style image's aspect ratio, selects the part of the painting the style is taken from
    (default: all of it). A mask may not be all black.
    """

    image: ImageInput
    blend_weight: float | None = None
    scale: float | None = None
    mask: ImageInput | None = None
    source_mask: ImageInput | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model the server can run; the default weights apply when a request leaves them unset."""

    name: str
    weights: str
    weights_sha256: str
    pooling: str
    preprocessing: str
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    default_content_weight: float
    default_style_weight: float
    default_tv_weight: float
    device: str
    opset: int
    exporter: str
    recipe: str = ""  # how generated weights (random, ranvgg) were made; empty for loaded ones and older servers
    seed: int | None = None  # of generated weights; None for loaded ones and older servers


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits the server enforces on requests."""

    max_pixels: int
    max_message_bytes: int
    max_styles: int
    max_evaluations: int
    max_concurrent: int
    max_queue: int
    max_regions: int = 0  # styles with a mask per request; 0 from a server older than the field


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the server runs (the first model is its default) and its limits."""

    models: tuple[ModelInfo, ...]
    limits: Limits


@dataclass(frozen=True, slots=True, kw_only=True)
class StylizeOptions:
    """Every option of a Stylize job, one field per ``nst.v1.StylizeOptions`` field; None means the server's default.

    The one definition of the client's options: ``StyleClient.stylize`` takes these fields as keyword arguments,
    the ``nst`` CLI fills them from its flags, and the request is built from them field by field (a test holds
    the names to the protobuf message's). Values are checked as the request is built; ranges are the server's.
    """

    max_side_px: int | None = None  # longest output side (server default 512)
    max_evaluations: int | None = None  # budget of loss+gradient evaluations (300, or the server's limit if lower)
    optimizer: OptimizerName | None = None  # "lbfgs" (default) or "adam"
    learning_rate: float | None = None  # Adam's step (0.02)
    content_weight: float | None = None  # alpha (the model's default)
    style_weight: float | None = None  # beta (the model's default)
    tv_weight: float | None = None  # gamma (the model's default)
    init: InitName | None = None  # start image: the photo in the styles' colours when there are both, else noise
    seed: int | None = None  # of the noise start (0)
    preview_every: int | None = None  # a Preview every N iterations (never)
    output_format: ImageFormatName | None = None  # "png" (default), "jpeg" or "webp"
    lbfgs_history: int | None = None  # L-BFGS memory (10)
    colour_preservation: ColourPreservationName | None = None  # "none" (default), "luminance" or "histogram"
    scales: int | None = None  # coarse-to-fine steps, sqrt(2) apart (one)
    coarse_evaluations: int | None = None  # budget of each scale but the last, with scales (max_evaluations)
    init_image: ImageInput | None = None  # the start image, with init="image"
    content_layers: Sequence[str] | None = None  # subset of the model's (all)
    style_layers: Sequence[str] | None = None  # subset of the model's (all)
    style_layer_weights: Sequence[float] | None = None  # one per style layer, normalised (equal)
    width_px: int | None = None  # texture synthesis only: output width (max_side_px)
    height_px: int | None = None  # texture synthesis only: output height (max_side_px)
    min_improvement: float | None = None  # stop a scale once the loss falls less than this over 10 iterations (off)
    tileable: bool | None = None  # True: circular padding, the output tiles without a seam (False)
    # A greyscale image at the output's aspect ratio, white where no style applies and the photo is kept (none)
    content_only_mask: ImageInput | None = None
    coarse_to_fine: bool | None = None  # True: the server's coarse-to-fine schedule, with scales unset (False)
