"""Translation at the edge: images and options to protobuf, protobuf to events, gRPC errors to ours.

This is the only module that handles ``grpc.RpcError``: ``rpc_errors()`` turns it into StyleTransferError.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from nst import events
from nst.v1 import style_transfer_pb2 as pb
from PIL import Image

from ._types import ImageInput, Limits, ModelInfo, ServerInfo, Style, StyleTransferError, StylizeOptions

_FIELDS = pb.StylizeOptions.DESCRIPTOR.fields_by_name
_STOP_REASONS = {pb.STOP_REASON_BUDGET: events.StopReason.BUDGET, pb.STOP_REASON_CONVERGED: events.StopReason.CONVERGED}
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


def mask_bytes(mask: ImageInput, what: str) -> bytes:
    """``image_bytes`` for a mask, which may also be an HxW greyscale array (uint8, or float in [0, 1])."""
    if isinstance(mask, np.ndarray) and mask.ndim == 2:
        mask = Image.fromarray(_to_uint8(mask, what, grey=True), "L")
    elif isinstance(mask, np.ndarray) and mask.shape[2:] != (3,):
        raise ValueError(f"{what}: expected an HxW greyscale or HxWx3 RGB array, got shape {mask.shape}")
    return image_bytes(mask, what)


def _to_uint8(array: np.ndarray[Any, Any], what: str, grey: bool = False) -> np.ndarray[Any, Any]:
    if not grey and (array.ndim != 3 or array.shape[2] != 3):
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


def enum_values(option: str) -> dict[str, int]:
    """An enum option's values by the client's name for them: OPTIMIZER_LBFGS -> "lbfgs" (UNSPECIFIED left out)."""
    enum = _FIELDS[option].enum_type
    assert enum is not None, f"{option} is not an enum field"
    prefix = enum.values[0].name.removesuffix("UNSPECIFIED")
    return {value.name.removeprefix(prefix).lower(): value.number for value in enum.values if value.number}


# The enums' names are exactly the values of the events' StrEnums (tests/client/test_options.py checks it).
_OPTIMIZERS = {number: events.Optimizer(name) for name, number in enum_values("optimizer").items()}
_FORMATS = {number: events.ImageFormat(name) for name, number in enum_values("output_format").items()}


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    return value


def _check_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    return float(value)


def options_to_pb(options: StylizeOptions) -> pb.StylizeOptions:
    """StylizeOptions with every field that is not None set (None: the server default), field by field.

    Raises ValueError for a choice outside its allowed values, a negative count or a malformed list; ranges
    against the server's limits are the server's to check.
    """
    message = pb.StylizeOptions()
    for option in dataclasses.fields(options):
        name, value = option.name, getattr(options, option.name)
        if value is None:
            continue
        field = _FIELDS[name]
        if field.type == FieldDescriptor.TYPE_ENUM:
            table = enum_values(name)
            if value not in table:
                raise ValueError(f"{name}: {value!r} is not allowed; allowed: {', '.join(map(repr, table))}")
            setattr(message, name, table[value])
        elif field.type == FieldDescriptor.TYPE_BYTES:
            setattr(message, name, (mask_bytes if name.endswith("mask") else image_bytes)(value, name))
        elif field.is_repeated:
            items = _sequence(name, value)
            if field.type == FieldDescriptor.TYPE_STRING and not all(isinstance(item, str) and item for item in items):
                raise ValueError(f"{name}: expected non-empty strings (layer names), got {value!r}")
            if field.type == FieldDescriptor.TYPE_DOUBLE and not all(_is_number(item) for item in items):
                raise ValueError(f"{name}: expected finite numbers, got {value!r}")
            getattr(message, name).extend(items if field.type == FieldDescriptor.TYPE_STRING else map(float, items))
        elif field.type == FieldDescriptor.TYPE_DOUBLE:
            setattr(message, name, _check_float(name, value))
        elif field.type == FieldDescriptor.TYPE_BOOL:
            if not isinstance(value, bool):
                raise ValueError(f"{name}: expected True or False, got {value!r}")
            setattr(message, name, value)
        else:  # the unsigned integers
            setattr(message, name, _check_int(name, value))
    return message


def _style_pb(style: StyleInput, index: int) -> pb.StyleImage:
    if not isinstance(style, Style):
        return pb.StyleImage(image=image_bytes(style, f"styles[{index}]"))
    message = pb.StyleImage(image=image_bytes(style.image, f"styles[{index}].image"))
    for name in ("mask", "source_mask"):
        value = getattr(style, name)
        if value is not None:
            setattr(message, name, mask_bytes(value, f"styles[{index}].{name}"))
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
    options: StylizeOptions,
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


def _losses(losses: pb.Losses) -> events.Losses:
    return events.Losses(total=losses.total, content=losses.content, style=losses.style, tv=losses.tv)


def to_event(response: pb.StylizeResponse) -> events.Event | None:
    """The event one stream message carries; None for an event kind this client does not know (a newer server)."""
    kind = response.WhichOneof("event")
    if kind == "queued":
        return events.Queued(job_id=response.queued.job_id, position=response.queued.position)
    if kind == "started":
        s = response.started
        optimizer = _OPTIMIZERS.get(s.optimizer, events.Optimizer.LBFGS)
        return events.Started(
            s.job_id, s.model, s.width, s.height, s.max_evaluations, optimizer, s.device, s.scales or 1
        )
    if kind == "scale_started":
        c = response.scale_started
        return events.ScaleStarted(c.scale, c.scales, c.width, c.height, c.max_evaluations)
    if kind == "progress":
        p = response.progress
        return events.Progress(p.iteration, p.evaluations, _losses(p.losses), p.elapsed_s)
    if kind == "preview":
        return events.Preview(response.preview.iteration, response.preview.image, _format(response.preview.format))
    if kind == "result":
        r, t = response.result, response.result.timings
        timings = events.Timings(t.queued_s, t.warmup_s, t.optimise_s, t.total_s, t.evaluate_s, t.step_s, t.host_s)
        return events.Result(
            r.image,
            _format(r.format),
            r.width,
            r.height,
            _losses(r.losses),
            r.iterations,
            r.evaluations,
            timings,
            _STOP_REASONS.get(r.stop_reason, events.StopReason.UNSPECIFIED),
            r.full_size_evaluations,
        )
    return None


def _format(value: int) -> events.ImageFormat:
    # The contract says "resolved: never unspecified"; PNG is its default.
    return _FORMATS.get(value, events.ImageFormat.PNG)


def _model_info(m: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=m.name, weights=m.weights, weights_sha256=m.weights_sha256, pooling=m.pooling,
        preprocessing=m.preprocessing, content_layers=tuple(m.content_layers), style_layers=tuple(m.style_layers),
        default_content_weight=m.default_content_weight, default_style_weight=m.default_style_weight,
        default_tv_weight=m.default_tv_weight, device=m.device, opset=m.opset, exporter=m.exporter,
        recipe=m.recipe, seed=m.seed if m.HasField("seed") else None,
    )  # fmt: skip


def server_info(response: pb.DescribeModelResponse) -> ServerInfo:
    """The server's description as plain values."""
    li = response.limits
    limits = Limits(li.max_pixels, li.max_message_bytes, li.max_styles, li.max_evaluations, li.max_concurrent,
                    li.max_queue, li.max_regions)  # fmt: skip
    return ServerInfo(tuple(_model_info(m) for m in response.models), limits)
