"""Translation at the edge: images and options to protobuf, protobuf to events, gRPC errors to ours.

This is the only module that handles ``grpc.RpcError``: ``rpc_errors()`` turns it into StyleTransferError.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from nst.v1 import style_transfer_pb2 as pb
from PIL import Image

from ._types import (
    Event,
    ImageInput,
    Limits,
    Losses,
    ModelInfo,
    Preview,
    Progress,
    Queued,
    Result,
    ScaleStarted,
    ServerInfo,
    Started,
    Style,
    StyleTransferError,
    Timings,
)

_OPTIMIZERS = {"lbfgs": pb.OPTIMIZER_LBFGS, "adam": pb.OPTIMIZER_ADAM}
_INITS = {"content": pb.INIT_CONTENT, "gray": pb.INIT_GRAY, "noise": pb.INIT_NOISE, "image": pb.INIT_IMAGE}
_FORMATS = {"png": pb.IMAGE_FORMAT_PNG, "jpeg": pb.IMAGE_FORMAT_JPEG, "webp": pb.IMAGE_FORMAT_WEBP}
_COLOUR_MODES = {
    "none": pb.COLOUR_PRESERVATION_NONE,
    "luminance": pb.COLOUR_PRESERVATION_LUMINANCE,
    "histogram": pb.COLOUR_PRESERVATION_HISTOGRAM,
}
_CHOICES = {"optimizer": _OPTIMIZERS, "init": _INITS, "output_format": _FORMATS, "colour_preservation": _COLOUR_MODES}
_INTS = ("max_side_px", "max_evaluations", "seed", "preview_every", "lbfgs_history", "scales", "coarse_evaluations",
         "width_px", "height_px")  # fmt: skip
_FLOATS = ("learning_rate", "content_weight", "style_weight", "tv_weight")
_STRING_LISTS = ("content_layers", "style_layers")
_NUMBER_LISTS = ("style_layer_weights",)
_IMAGES = ("init_image",)
_OPTIMIZER_NAMES = {value: name for name, value in _OPTIMIZERS.items()}
_FORMAT_NAMES = {value: name for name, value in _FORMATS.items()}
# Modes PNG stores as they are; anything else (CMYK, YCbCr, LAB, HSV, F, I;16...) goes through RGB.
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I"}


@contextmanager
def rpc_errors() -> Iterator[None]:
    """Run a gRPC call, raising StyleTransferError (code and message kept) instead of grpc.RpcError."""
    try:
        yield
    except grpc.RpcError as error:
        raise StyleTransferError.from_rpc_error(error) from None


def image_bytes(image: ImageInput, what: str) -> bytes:
    """Encoded image bytes from a path, bytes, a PIL image or an array (HxWx3 uint8, or float in [0, 1]).

    Paths and bytes are sent as they are, the server decodes them; PIL images and arrays are encoded as PNG.
    """
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(_to_uint8(image, what))
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        (image if image.mode in _PNG_MODES else image.convert("RGB")).save(buffer, "PNG")
        return buffer.getvalue()
    raise TypeError(f"{what}: expected a path, bytes, a PIL image or a numpy array, not {type(image).__name__}")


def _to_uint8(array: np.ndarray[Any, Any], what: str) -> np.ndarray[Any, Any]:
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{what}: expected an HxWx3 RGB array, got shape {array.shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{what}: a float array must hold finite values in [0, 1]")
        return np.round(array * 255).astype(np.uint8)
    raise ValueError(f"{what}: expected a uint8 or float array, got dtype {array.dtype}")


StyleInput = ImageInput | Style


def single_or_many(styles: StyleInput | Sequence[StyleInput] | None) -> list[StyleInput]:
    """One style (image or Style), a sequence of them, or None as a list (bytes and str are one image)."""
    if styles is None:
        return []
    if isinstance(styles, str | bytes | bytearray | memoryview | os.PathLike | Image.Image | np.ndarray | Style):
        return [styles]
    return list(styles)


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _sequence(name: str, value: object) -> list[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"{name}: expected a sequence (list or tuple), got {value!r}")
    return list(value)


def options_to_pb(options: Mapping[str, object]) -> pb.StylizeOptions:
    """StylizeOptions with the given options set; None (or absent) leaves a field unset: the server default.

    Raises ValueError for an unknown option, a choice outside its allowed values or a negative number;
    ranges against the server's limits are the server's to check.
    """
    message = pb.StylizeOptions()
    for name, value in options.items():
        if value is None:
            continue
        if name in _CHOICES:
            table = _CHOICES[name]
            if value not in table:
                raise ValueError(f"{name}: {value!r} is not allowed; allowed: {', '.join(map(repr, table))}")
            setattr(message, name, table[value])
        elif name in _INTS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
            setattr(message, name, value)
        elif name in _FLOATS:
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise ValueError(f"{name}: expected a number, got {value!r}")
            setattr(message, name, float(value))
        elif name in _STRING_LISTS:
            items = _sequence(name, value)
            if not all(isinstance(item, str) and item for item in items):
                raise ValueError(f"{name}: expected non-empty strings (layer names), got {value!r}")
            getattr(message, name).extend(items)
        elif name in _NUMBER_LISTS:
            items = _sequence(name, value)
            if not all(_is_number(item) for item in items):
                raise ValueError(f"{name}: expected finite numbers, got {value!r}")
            getattr(message, name).extend(float(item) for item in items)
        elif name in _IMAGES:
            setattr(message, name, image_bytes(value, name))  # type: ignore[arg-type]
        else:
            allowed = (*_CHOICES, *_INTS, *_FLOATS, *_STRING_LISTS, *_NUMBER_LISTS, *_IMAGES)
            raise ValueError(f"unknown option {name!r}; allowed: {', '.join(allowed)}")
    return message


def _style_pb(style: StyleInput, index: int) -> pb.StyleImage:
    if not isinstance(style, Style):
        return pb.StyleImage(image=image_bytes(style, f"styles[{index}]"))
    message = pb.StyleImage(image=image_bytes(style.image, f"styles[{index}].image"))
    for name in ("blend_weight", "scale"):
        value = getattr(style, name)
        if value is None:
            continue
        if not _is_number(value):
            raise ValueError(f"styles[{index}].{name}: expected a finite number, got {value!r}")
        setattr(message, name, float(value))
    return message


def stylize_request(
    content: ImageInput | None,
    styles: StyleInput | Sequence[StyleInput] | None,
    model: str | None,
    options: Mapping[str, object],
) -> pb.StylizeRequest:
    """The whole request; reads files and encodes images now, so that bad input fails before any call.

    No content: texture synthesis; no styles: content reconstruction; one of them is required.
    """
    style_list = single_or_many(styles)
    if content is None and not style_list:
        raise ValueError("content, styles: a content image, a style image, or both are required")
    return pb.StylizeRequest(
        content_image=b"" if content is None else image_bytes(content, "content"),
        style_images=[_style_pb(s, i) for i, s in enumerate(style_list)],
        options=options_to_pb(options),
        model=model or "",
    )


def _losses(losses: pb.Losses) -> Losses:
    return Losses(total=losses.total, content=losses.content, style=losses.style, tv=losses.tv)


def to_event(response: pb.StylizeResponse) -> Event | None:
    """The event one stream message carries; None for an event kind this client does not know (a newer server)."""
    kind = response.WhichOneof("event")
    if kind == "queued":
        return Queued(job_id=response.queued.job_id, position=response.queued.position)
    if kind == "started":
        s = response.started
        optimizer = _OPTIMIZER_NAMES.get(s.optimizer, "lbfgs")
        return Started(s.job_id, s.model, s.width, s.height, s.max_evaluations, optimizer, s.device, s.scales or 1)
    if kind == "scale_started":
        c = response.scale_started
        return ScaleStarted(c.scale, c.scales, c.width, c.height, c.max_evaluations)
    if kind == "progress":
        p = response.progress
        return Progress(p.iteration, p.evaluations, _losses(p.losses), p.elapsed_s)
    if kind == "preview":
        return Preview(response.preview.iteration, response.preview.image, _format(response.preview.format))
    if kind == "result":
        r, t = response.result, response.result.timings
        timings = Timings(t.queued_s, t.warmup_s, t.optimise_s, t.total_s, t.evaluate_s)
        return Result(
            r.image, _format(r.format), r.width, r.height, _losses(r.losses), r.iterations, r.evaluations, timings
        )
    return None


def _format(value: int) -> Any:
    return _FORMAT_NAMES.get(value, "png")  # the contract says "resolved: never unspecified"; PNG is its default


def _model_info(m: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=m.name, weights=m.weights, weights_sha256=m.weights_sha256, pooling=m.pooling,
        preprocessing=m.preprocessing, content_layers=tuple(m.content_layers), style_layers=tuple(m.style_layers),
        default_content_weight=m.default_content_weight, default_style_weight=m.default_style_weight,
        default_tv_weight=m.default_tv_weight, device=m.device, opset=m.opset, exporter=m.exporter,
    )  # fmt: skip


def server_info(response: pb.DescribeModelResponse) -> ServerInfo:
    """The server's description as plain values."""
    li = response.limits
    limits = Limits(li.max_pixels, li.max_message_bytes, li.max_styles, li.max_evaluations, li.max_concurrent,
                    li.max_queue)  # fmt: skip
    return ServerInfo(tuple(_model_info(m) for m in response.models), limits)
