"""Protobuf to domain and back. Validation happens here, once; messages name the field, value and limit."""

from __future__ import annotations

import math
from collections.abc import Sequence

from nst.v1 import style_transfer_pb2 as pb

from . import images
from .config import ServerConfig
from .errors import InvalidRequest
from .graphs import LossGraphs
from .job import Event, ImageFormat, Init, Job, Losses, Optimizer, Options, Preview, Progress, Queued, Result, Started
from .manifest import LossWeights

_OPTIMIZERS = {
    pb.OPTIMIZER_UNSPECIFIED: Optimizer.LBFGS,
    pb.OPTIMIZER_LBFGS: Optimizer.LBFGS,
    pb.OPTIMIZER_ADAM: Optimizer.ADAM,
}
_INITS = {
    pb.INIT_UNSPECIFIED: Init.CONTENT,
    pb.INIT_CONTENT: Init.CONTENT,
    pb.INIT_GRAY: Init.GRAY,
    pb.INIT_NOISE: Init.NOISE,
}
_FORMATS = {
    pb.IMAGE_FORMAT_UNSPECIFIED: ImageFormat.PNG,
    pb.IMAGE_FORMAT_PNG: ImageFormat.PNG,
    pb.IMAGE_FORMAT_JPEG: ImageFormat.JPEG,
    pb.IMAGE_FORMAT_WEBP: ImageFormat.WEBP,
}
_FORMAT_TO_PB = {
    ImageFormat.PNG: pb.IMAGE_FORMAT_PNG,
    ImageFormat.JPEG: pb.IMAGE_FORMAT_JPEG,
    ImageFormat.WEBP: pb.IMAGE_FORMAT_WEBP,
}
_OPTIMIZER_TO_PB = {Optimizer.LBFGS: pb.OPTIMIZER_LBFGS, Optimizer.ADAM: pb.OPTIMIZER_ADAM}
MAX_LBFGS_HISTORY = 100


def _enum(field: str, value: int, table: dict[int, object], enum_type: object) -> object:
    if value not in table:
        allowed = ", ".join(pb.DESCRIPTOR.enum_types_by_name[enum_type].values_by_name)  # type: ignore[index]
        raise InvalidRequest(f"{field}: unknown value {value}; allowed: {allowed}")
    return table[value]


def _weight(field: str, options: pb.StylizeOptions, default: float) -> float:
    if not options.HasField(field):
        return default
    value = getattr(options, field)
    if not math.isfinite(value) or value < 0:
        raise InvalidRequest(f"options.{field}: {value} is not allowed; expected a finite number >= 0")
    return value


def _bounded(field: str, value: int, default: int, low: int, high: int) -> int:
    if value == 0:
        return default
    if not low <= value <= high:
        raise InvalidRequest(
            f"options.{field}: {value} is out of range; allowed {low} to {high} (0 = default {default})"
        )
    return value


def options_from_pb(options: pb.StylizeOptions, config: ServerConfig, defaults: LossWeights) -> Options:
    """Validated options with every unset field at its documented default."""
    base = Options()
    learning_rate = options.learning_rate if options.HasField("learning_rate") else base.learning_rate
    if not math.isfinite(learning_rate) or not 0 < learning_rate <= 1:
        raise InvalidRequest(f"options.learning_rate: {learning_rate} is not allowed; expected 0 < rate <= 1")
    return Options(
        max_side_px=_bounded(
            "max_side_px",
            options.max_side_px,
            min(base.max_side_px, config.max_side_px),
            images.MIN_SIDE_PX,
            config.max_side_px,
        ),
        max_evaluations=_bounded(
            "max_evaluations", options.max_evaluations, base.max_evaluations, 1, config.max_evaluations
        ),
        optimizer=_enum("options.optimizer", options.optimizer, _OPTIMIZERS, "Optimizer"),  # type: ignore[arg-type]
        learning_rate=learning_rate,
        loss_weights=LossWeights(
            content=_weight("content_weight", options, defaults.content),
            style=_weight("style_weight", options, defaults.style),
            tv=_weight("tv_weight", options, defaults.tv),
        ),
        init=_enum("options.init", options.init, _INITS, "Init"),  # type: ignore[arg-type]
        seed=options.seed,
        preview_every=options.preview_every,
        output_format=_enum("options.output_format", options.output_format, _FORMATS, "ImageFormat"),  # type: ignore[arg-type]
        lbfgs_history=_bounded("lbfgs_history", options.lbfgs_history, base.lbfgs_history, 1, MAX_LBFGS_HISTORY),
    )


def pick_model(name: str, models: Sequence[LossGraphs]) -> LossGraphs:
    """The named model, or the first when the request names none."""
    if not name:
        return models[0]
    for graphs in models:
        if graphs.name == name:
            return graphs
    raise InvalidRequest(f"model: {name!r} is not loaded; available: {', '.join(g.name for g in models)}")


def job_from_request(
    request: pb.StylizeRequest, job_id: str, models: Sequence[LossGraphs], config: ServerConfig
) -> Job:
    """Decode and validate everything a job needs; raises InvalidRequest naming the first problem."""
    graphs = pick_model(request.model, models)
    options = options_from_pb(request.options, config, graphs.manifest.default_loss_weights)
    if not request.content_image:
        raise InvalidRequest("content_image: required (texture synthesis without a content image is not supported yet)")
    if not request.style_images:
        raise InvalidRequest("style_images: at least one style image is required")
    if len(request.style_images) > config.max_styles:
        raise InvalidRequest(f"style_images: {len(request.style_images)} given, at most {config.max_styles} allowed")
    for index, style in enumerate(request.style_images):
        for field in ("blend_weight", "scale"):
            if style.HasField(field):
                raise InvalidRequest(f"style_images[{index}].{field}: not supported yet; leave it unset")
    content = images.decode(request.content_image, "content_image", config.max_pixels)
    size = images.size_for_longest_side(*content.size, options.max_side_px)
    if min(size) < images.MIN_SIDE_PX:
        raise InvalidRequest(
            f"content_image: {content.width}x{content.height} at max_side_px {options.max_side_px} is {size[0]}x"
            f"{size[1]}; both sides must be at least {images.MIN_SIDE_PX} px"
        )
    styles = []
    for index, style in enumerate(request.style_images):
        field = f"style_images[{index}].image"
        decoded = images.decode(style.image, field, config.max_pixels)
        style_size = images.size_for_longest_side(*decoded.size, options.max_side_px)
        if min(style_size) < images.MIN_SIDE_PX:
            raise InvalidRequest(
                f"{field}: {decoded.width}x{decoded.height} is too narrow to scale to "
                f"{images.MIN_SIDE_PX} px on its short side"
            )
        styles.append(images.to_array(decoded, style_size))
    return Job(job_id, graphs.name, images.to_array(content, size), tuple(styles), options)


def _losses(losses: Losses) -> pb.Losses:
    return pb.Losses(total=losses.total, content=losses.content, style=losses.style, tv=losses.tv)


def to_response(event: Event) -> pb.StylizeResponse:
    """One stream message for one domain event."""
    match event:
        case Queued():
            return pb.StylizeResponse(queued=pb.JobQueued(job_id=event.job_id, position=event.position))
        case Started():
            return pb.StylizeResponse(started=pb.JobStarted(
                job_id=event.job_id, model=event.model, width=event.width, height=event.height,
                max_evaluations=event.max_evaluations, optimizer=_OPTIMIZER_TO_PB[event.optimizer], device=event.device,
            ))  # fmt: skip
        case Progress():
            return pb.StylizeResponse(progress=pb.Progress(
                iteration=event.iteration, evaluations=event.evaluations, losses=_losses(event.losses),
                elapsed_s=event.elapsed_s,
            ))  # fmt: skip
        case Preview():
            return pb.StylizeResponse(
                preview=pb.Preview(iteration=event.iteration, image=event.image, format=_FORMAT_TO_PB[event.format])
            )
        case Result():
            t = event.timings
            return pb.StylizeResponse(result=pb.Result(
                image=event.image, format=_FORMAT_TO_PB[event.format], width=event.width, height=event.height,
                losses=_losses(event.losses), iterations=event.iterations, evaluations=event.evaluations,
                timings=pb.Timings(
                    queued_s=t.queued_s, warmup_s=t.warmup_s, optimise_s=t.optimise_s, total_s=t.total_s
                ),
            ))  # fmt: skip
    raise TypeError(f"not an event: {event!r}")


def describe(models: Sequence[LossGraphs], config: ServerConfig) -> pb.DescribeModelResponse:
    """What the server runs and the limits it enforces."""
    infos = []
    for graphs in models:
        m = graphs.manifest
        defaults = m.default_loss_weights
        infos.append(pb.ModelInfo(
            name=graphs.name, weights=m.weights, weights_sha256=m.weights_sha256, pooling=m.pooling,
            preprocessing=m.preprocessing, content_layers=m.content_layers, style_layers=m.style_layers,
            default_content_weight=defaults.content, default_style_weight=defaults.style, default_tv_weight=defaults.tv,
            device=graphs.device, opset=m.opset, exporter=m.exporter,
        ))  # fmt: skip
    limits = pb.Limits(
        max_pixels=config.max_pixels,
        max_message_bytes=config.max_message_bytes,
        max_styles=config.max_styles,
        max_evaluations=config.max_evaluations,
        max_concurrent=config.max_concurrent,
        max_queue=config.max_queue,
    )
    return pb.DescribeModelResponse(models=infos, limits=limits)
