"""Protobuf to domain and back. Validation happens here, once; messages name the field, value and limit."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from nst import events
from nst.manifest import LossWeights, Manifest
from nst.v1 import style_transfer_pb2 as pb

from ..config import ServerConfig
from ..domain import images, memory, spatial
from ..domain.errors import InvalidRequest, untiled_only
from ..domain.evaluation import FloatArray
from ..domain.job import ColourPreservation, Init, Job, Options, Style, default_init
from ..domain.memory import JobPlan
from ..domain.model import LossModel
from ..domain.schedule import scale_sizes

T = TypeVar("T")

_OPTIMIZERS: dict[int, events.Optimizer] = {
    pb.OPTIMIZER_UNSPECIFIED: events.Optimizer.LBFGS,
    pb.OPTIMIZER_LBFGS: events.Optimizer.LBFGS,
    pb.OPTIMIZER_ADAM: events.Optimizer.ADAM,
}
_INITS: dict[int, Init | None] = {
    pb.INIT_UNSPECIFIED: None,  # job.default_init decides, from the images the request has
    pb.INIT_CONTENT: Init.CONTENT,
    pb.INIT_GRAY: Init.GRAY,
    pb.INIT_NOISE: Init.NOISE,
    pb.INIT_IMAGE: Init.IMAGE,
    pb.INIT_MATCHED: Init.MATCHED,
}
_FORMATS: dict[int, events.ImageFormat] = {
    pb.IMAGE_FORMAT_UNSPECIFIED: events.ImageFormat.PNG,
    pb.IMAGE_FORMAT_PNG: events.ImageFormat.PNG,
    pb.IMAGE_FORMAT_JPEG: events.ImageFormat.JPEG,
    pb.IMAGE_FORMAT_WEBP: events.ImageFormat.WEBP,
}
_COLOUR: dict[int, ColourPreservation] = {
    pb.COLOUR_PRESERVATION_UNSPECIFIED: ColourPreservation.NONE,
    pb.COLOUR_PRESERVATION_NONE: ColourPreservation.NONE,
    pb.COLOUR_PRESERVATION_LUMINANCE: ColourPreservation.LUMINANCE,
    pb.COLOUR_PRESERVATION_HISTOGRAM: ColourPreservation.HISTOGRAM,
}
_FORMAT_TO_PB = {
    events.ImageFormat.PNG: pb.IMAGE_FORMAT_PNG,
    events.ImageFormat.JPEG: pb.IMAGE_FORMAT_JPEG,
    events.ImageFormat.WEBP: pb.IMAGE_FORMAT_WEBP,
}
_OPTIMIZER_TO_PB = {events.Optimizer.LBFGS: pb.OPTIMIZER_LBFGS, events.Optimizer.ADAM: pb.OPTIMIZER_ADAM}
_STOP_REASON_TO_PB = {
    events.StopReason.BUDGET: pb.STOP_REASON_BUDGET,
    events.StopReason.CONVERGED: pb.STOP_REASON_CONVERGED,
    events.StopReason.UNSPECIFIED: pb.STOP_REASON_UNSPECIFIED,  # never emitted: the pipeline knows why it stopped
}
MAX_LBFGS_HISTORY = 100
MAX_SCALES = 8
MAX_STYLE_SCALE = 4.0
# Of any loss, blend or layer weight. The defaults are about 1 to 1e6; a float32 loss of squared differences of
# unit-scale features times 1e12 stays far below float32's 3e38, and so do its gradients.
MAX_WEIGHT = 1e12


def _enum(field: str, value: int, table: dict[int, T], wrapper: EnumTypeWrapper) -> T:
    if value not in table:
        allowed = ", ".join(wrapper.Name(pb_value) for pb_value in table)
        raise InvalidRequest(f"{field}: unknown value {value}; allowed: {allowed}")
    return table[value]


def _bounded_weight(field: str, value: float) -> float:
    """A weight in [0, MAX_WEIGHT]: beyond it float32 losses overflow (1e300 gave NaN losses and a black image)."""
    if not math.isfinite(value) or not 0 <= value <= MAX_WEIGHT:
        raise InvalidRequest(f"{field}: {value} is not allowed; expected a finite number from 0 to {MAX_WEIGHT:g}")
    return value


def _weight(field: str, options: pb.StylizeOptions, default: float) -> float:
    return _bounded_weight(f"options.{field}", getattr(options, field)) if options.HasField(field) else default


def _coarse_to_fine(options: pb.StylizeOptions) -> bool:
    if options.coarse_to_fine and options.scales:
        raise InvalidRequest("options.coarse_to_fine: the server's own schedule; leave options.scales unset with it")
    return options.coarse_to_fine


def _min_improvement(options: pb.StylizeOptions) -> float:
    value = options.min_improvement if options.HasField("min_improvement") else 0.0
    if not math.isfinite(value) or not 0 <= value < 1:
        raise InvalidRequest(f"options.min_improvement: {value} is not allowed; expected 0 <= value < 1 (0 = off)")
    return value


def _bounded(field: str, value: int, default: int, low: int, high: int) -> int:
    if value == 0:
        return default
    if not low <= value <= high:
        raise InvalidRequest(
            f"options.{field}: {value} is out of range; allowed {low} to {high} (0 = default {default})"
        )
    return value


def _layers(field: str, names: Sequence[str], exported: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [name for name in names if name not in exported]
    if unknown or len(set(names)) != len(names):
        problem = f"{', '.join(map(repr, unknown))} not exported" if unknown else "a layer named twice"
        raise InvalidRequest(f"options.{field}: {problem}; this model exports {', '.join(exported)}")
    return tuple(names)


def _style_layer_weights(options: pb.StylizeOptions, style_layers: tuple[str, ...]) -> tuple[float, ...]:
    weights = tuple(_bounded_weight("options.style_layer_weights", w) for w in options.style_layer_weights)
    if weights and len(weights) != len(style_layers):
        raise InvalidRequest(
            f"options.style_layer_weights: {len(weights)} given for {len(style_layers)} style layers "
            f"({', '.join(style_layers)})"
        )
    if weights and sum(weights) <= 0:
        raise InvalidRequest("options.style_layer_weights: all are 0; at least one must be positive")
    return weights


def options_from_pb(
    options: pb.StylizeOptions, config: ServerConfig, manifest: Manifest, has_content: bool, has_style: bool
) -> Options:
    """Validated options with every unset field at its documented default (``job.Options``; ``init`` from
    ``job.default_init``, which needs to know whether the request has a content and a style image)."""
    base, defaults = Options(), manifest.default_loss_weights
    learning_rate = options.learning_rate if options.HasField("learning_rate") else base.learning_rate
    if not math.isfinite(learning_rate) or not 0 < learning_rate <= 1:
        raise InvalidRequest(f"options.learning_rate: {learning_rate} is not allowed; expected 0 < rate <= 1")
    style_layers = _layers("style_layers", options.style_layers, manifest.style_layers)
    max_evaluations = config.limits.max_evaluations
    return Options(
        max_side_px=_bounded(
            "max_side_px", options.max_side_px, min(base.max_side_px, config.limits.max_side_px), images.MIN_SIDE_PX,
            config.limits.max_side_px,
        ),
        # The default is capped by the server's limit as max_side_px's is: unset must never mean "over the limit".
        max_evaluations=_bounded(
            "max_evaluations", options.max_evaluations, min(base.max_evaluations, max_evaluations), 1, max_evaluations
        ),
        optimizer=_enum("options.optimizer", options.optimizer, _OPTIMIZERS, pb.Optimizer),
        learning_rate=learning_rate,
        loss_weights=LossWeights(
            content=_weight("content_weight", options, defaults.content),
            style=_weight("style_weight", options, defaults.style),
            tv=_weight("tv_weight", options, defaults.tv),
        ),
        init=_enum("options.init", options.init, _INITS, pb.Init) or default_init(has_content, has_style),
        seed=options.seed,
        preview_every=options.preview_every,
        output_format=_enum("options.output_format", options.output_format, _FORMATS, pb.ImageFormat),
        lbfgs_history=_bounded("lbfgs_history", options.lbfgs_history, base.lbfgs_history, 1, MAX_LBFGS_HISTORY),
        colour_preservation=_enum(
            "options.colour_preservation", options.colour_preservation, _COLOUR, pb.ColourPreservation
        ),
        scales=_bounded("scales", options.scales, base.scales, 1, MAX_SCALES),
        coarse_evaluations=_bounded("coarse_evaluations", options.coarse_evaluations, 0, 1, max_evaluations),
        min_improvement=_min_improvement(options),
        content_layers=_layers("content_layers", options.content_layers, manifest.content_layers),
        style_layers=style_layers,
        style_layer_weights=_style_layer_weights(options, style_layers or manifest.style_layers),
        tileable=options.tileable,
        coarse_to_fine=_coarse_to_fine(options),
    )  # fmt: skip


def pick_model(name: str, models: Sequence[LossModel]) -> LossModel:
    """The named model, or the first when the request names none."""
    if not name:
        return models[0]
    for model in models:
        if model.name == name:
            return model
    raise InvalidRequest(f"model: {name!r} is not loaded; available: {', '.join(g.name for g in models)}")


def _check_side(field: str, size: tuple[int, int], why: str) -> None:
    if min(size) < images.MIN_SIDE_PX:
        raise InvalidRequest(
            f"{field}: {why} is {size[0]}x{size[1]}; both sides must be at least {images.MIN_SIDE_PX} px"
        )


def _content_size(width: int, height: int, options: Options) -> tuple[int, int]:
    """The output's size for a content image of ``width`` x ``height``: its longest side at max_side_px."""
    size = images.size_for_longest_side(width, height, options.max_side_px)
    _check_side("content_image", size, f"{width}x{height} at max_side_px {options.max_side_px}")
    return size


def _content(request: pb.StylizeRequest, options: Options, config: ServerConfig) -> FloatArray:
    """The decoded content image at max_side_px: its size is the output's."""
    decoded = images.decode(request.content_image, "content_image", config.limits.max_pixels)
    return images.to_array(decoded, _content_size(*decoded.size, options))


def _texture_size(request: pb.StylizeRequest, options: Options, config: ServerConfig) -> tuple[int, int]:
    """The output size of texture synthesis (no content image): as requested, each side max_side_px by default."""
    opts, side, limit = request.options, options.max_side_px, config.limits.max_side_px
    width = _bounded("width_px", opts.width_px, side, images.MIN_SIDE_PX, limit)
    height = _bounded("height_px", opts.height_px, side, images.MIN_SIDE_PX, limit)
    return width, height


def _check_init(request: pb.StylizeRequest, options: Options) -> None:
    """The start image and colour preservation make sense for the images the request has."""
    has_content = bool(request.content_image)
    if options.init is Init.CONTENT and not has_content:
        raise InvalidRequest(
            "options.init: INIT_CONTENT needs a content image; use INIT_NOISE, INIT_GRAY or INIT_IMAGE"
        )
    if options.init is Init.MATCHED and not (has_content and request.style_images):
        raise InvalidRequest("options.init: INIT_MATCHED needs a content image and a style image")
    if (options.init is Init.IMAGE) != bool(request.options.init_image):
        raise InvalidRequest("options.init_image: give it exactly when options.init is INIT_IMAGE")
    if options.colour_preservation is not ColourPreservation.NONE and not has_content:
        raise InvalidRequest("options.colour_preservation: keeps the content image's colours; this request has none")


def _style_size(
    style: pb.StyleImage, index: int, output_side: int, config: ServerConfig
) -> tuple[tuple[int, int], tuple[int, int]]:
    """A style's size as encoded and its working size, ``scale`` times the output's longest side, from its header;
    its fields checked."""
    field = f"style_images[{index}]"
    if style.HasField("blend_weight"):
        _bounded_weight(f"{field}.blend_weight", style.blend_weight)
    scale = style.scale if style.HasField("scale") else 1.0
    if not math.isfinite(scale) or not 0 < scale <= MAX_STYLE_SCALE:
        raise InvalidRequest(f"{field}.scale: {scale} is not allowed; expected 0 < scale <= {MAX_STYLE_SCALE:g}")
    width, height = images.probe(style.image, f"{field}.image", config.limits.max_pixels)
    size = images.size_for_longest_side(width, height, max(1, round(output_side * scale)))
    if size[0] * size[1] > config.limits.max_pixels:
        raise InvalidRequest(
            f"{field}.scale: {scale:g} makes the style {size[0]}x{size[1]}, over {config.limits.max_pixels} pixels"
        )
    return (width, height), size


def _style(style: pb.StyleImage, index: int, planned: tuple[int, int], config: ServerConfig) -> Style:
    """A decoded style at its planned working size (its longest side; EXIF may have turned it), with its blend
    weight."""
    weight = style.blend_weight if style.HasField("blend_weight") else 1.0
    decoded = images.decode(style.image, f"style_images[{index}].image", config.limits.max_pixels)
    return Style(images.to_array(decoded, images.size_for_longest_side(*decoded.size, max(planned))), weight)


def _mask(data: bytes, field: str, fits: tuple[int, int], what: str, config: ServerConfig) -> FloatArray:
    """A decoded greyscale mask (H, W) in [0, 1] at ``fits`` (width, height), which its aspect ratio must match."""
    decoded = images.decode(data, field, config.limits.max_pixels).convert("L")
    width, height = decoded.size
    ratio, wanted = width / height, fits[0] / fits[1]
    if abs(ratio / wanted - 1) > spatial.ASPECT_TOLERANCE:
        raise InvalidRequest(
            f"{field}: {width}x{height} has aspect ratio {ratio:.3f}; {what} is {fits[0]}x{fits[1]} ({wanted:.3f}), "
            f"and a mask must match it within {spatial.ASPECT_TOLERANCE:.0%}"
        )
    if decoded.getextrema()[1] == 0:
        raise InvalidRequest(f"{field}: all black, so it selects nothing; white marks where it applies")
    return images.mask_to_array(decoded, fits)


def _style_masks(request: pb.StylizeRequest, styles: tuple[Style, ...], size: tuple[int, int], config: ServerConfig,
                 ) -> tuple[Style, ...]:  # fmt: skip
    """``styles`` with their masks (at the output's size) and source masks (at each style's size), checked."""
    given = [bool(style.mask) for style in request.style_images]
    if any(given) and not all(given):
        raise InvalidRequest(
            f"style_images[].mask: given for {sum(given)} of {len(given)} styles; give a mask for every style or "
            "for none"
        )
    if sum(given) > spatial.MAX_REGIONS:
        raise InvalidRequest(
            f"style_images[].mask: {sum(given)} masked styles; at most {spatial.MAX_REGIONS} regions are allowed"
        )
    checked = []
    for index, (message, style) in enumerate(zip(request.style_images, styles, strict=True)):
        field = f"style_images[{index}]"
        mask = _mask(message.mask, f"{field}.mask", size, "the output", config) if message.mask else None
        source = None
        if message.source_mask:
            style_size = (style.image.shape[3], style.image.shape[2])
            source = _mask(message.source_mask, f"{field}.source_mask", style_size, "its style image", config)
        checked.append(replace(style, mask=mask, source_mask=source))
    return tuple(checked)


def _content_only(request: pb.StylizeRequest, size: tuple[int, int], config: ServerConfig) -> FloatArray | None:
    data = request.options.content_only_mask
    if not data:
        return None
    field = "options.content_only_mask"
    if not request.content_image or not request.style_images:
        raise InvalidRequest(f"{field}: keeps the content photo where no style applies; needs a content and a style")
    mask = _mask(data, field, size, "the output", config)
    if mask.min() >= 1.0 - 1.0 / 255:
        raise InvalidRequest(f"{field}: white everywhere, so no pixel is left for the style; black marks where it may")
    return mask


def _check_overlap(styles: tuple[Style, ...], content_only: FloatArray | None) -> None:
    """At every pixel the styles' masks and the content-only region add up to at most 1 (within the tolerance)."""
    masks = [style.mask for style in styles if style.mask is not None]
    if content_only is not None:
        masks.append(content_only)
    if len(masks) < 2:
        return
    total: npt.NDArray[np.float64] = np.stack(masks).sum(axis=0, dtype=np.float64)
    worst = np.unravel_index(int(np.argmax(total)), total.shape)
    if total[worst] > 1.0 + spatial.OVERLAP_TOLERANCE:
        fields = "style_images[].mask" + (", options.content_only_mask" if content_only is not None else "")
        raise InvalidRequest(
            f"{fields}: they add up to {total[worst]:.2f} at x={worst[1]}, y={worst[0]} of the output; at every pixel "
            f"the masks may add up to at most 1 (within {spatial.OVERLAP_TOLERANCE:g}): soft masks that blend "
            "styles share 1 between them"
        )


def _check_untiled(plan: JobPlan, tileable: bool) -> None:
    """Masks and tileable output need whole-image graphs: refuse, before anything is decoded, what the server would
    evaluate in tiles. Regions and tileable need the output whole; a source mask, or tileable, needs that style whole
    (a masked job's styles without source masks may be larger: their plain targets are taken in tiles)."""
    limit, regions = plan.whole_max_side_px, plan.output_masks > 0
    if limit is None:
        return
    checks = [("masks" if regions else "options.tileable", "output", plan.output)] if regions or tileable else []
    for index, (size, source_masked) in enumerate(zip(plan.styles, plan.source_masked, strict=True)):
        if source_masked or tileable:
            what = f"style_images[{index}].source_mask" if source_masked else "options.tileable"
            checks.append((what, f"style_images[{index}]", size))
    for what, name, (width, height) in checks:
        if max(width, height) > limit:
            raise untiled_only(what, f"{name} is {width}x{height}", limit)


def _check_scales(size: tuple[int, int], style_sizes: Sequence[tuple[int, int]], options: Options) -> None:
    """Every image of the coarsest scale must still be 32 px on its short side (relu5_1 needs four poolings)."""
    # One scale, or the server's own schedule (coarse_to_fine), which adds scales only while every image stays large
    # enough: here the coarsest scale is checked as the output size itself.
    scales = options.scales or 1
    _check_side("options.scales", scale_sizes(size, scales)[0], f"the coarsest of {scales} scales")
    for index, style_size in enumerate(style_sizes):
        _check_side(
            f"style_images[{index}]", scale_sizes(style_size, scales)[0], "at the coarsest scale, after its scale"
        )


@dataclass(frozen=True, slots=True)
class PlannedJob:
    """A request checked as far as it can be without decoding: its model, options, sizes and memory plan."""

    model: LossModel
    options: Options
    plan: JobPlan

    @property
    def peak_bytes(self) -> int:
        return memory.peak_bytes(self.plan)


RESPONSE_OVERHEAD_BYTES = 64 * 1024  # a Result's other fields and protobuf's framing, with room to spare


def send_limit(config: ServerConfig) -> int:
    """The largest response message the server sends: --max-response-bytes, or by default what the largest output
    it allows may take encoded (``images.max_encoded_bytes``)."""
    if config.max_response_bytes is not None:
        return config.max_response_bytes
    side = config.limits.max_side_px
    return images.max_encoded_bytes((side, side)) + RESPONSE_OVERHEAD_BYTES


def _check_sendable(size: tuple[int, int], config: ServerConfig) -> None:
    """A result (or preview) that could not be sent is refused before the job starts, not found after computing it."""
    needed, limit = images.max_encoded_bytes(size) + RESPONSE_OVERHEAD_BYTES, send_limit(config)
    if needed > limit:
        raise InvalidRequest(
            f"options.max_side_px: a {size[0]}x{size[1]} result may take up to {needed} bytes encoded, more than "
            f"this server sends in one message (--max-response-bytes {limit}); ask for a smaller size"
        )


def plan_request(request: pb.StylizeRequest, models: Sequence[LossModel], config: ServerConfig) -> PlannedJob:
    """Everything that needs no decoding checked, cheapest first (counts, options, each image's header and its
    pixel limit, working sizes, scales, untiled-only features), and the job's plan for its memory estimate.

    Raises:
        InvalidRequest: naming the first problem found.
    """
    model = pick_model(request.model, models)
    if not request.content_image and not request.style_images:
        raise InvalidRequest("content_image, style_images: both empty; give a content image, a style image or both")
    if len(request.style_images) > config.limits.max_styles:
        raise InvalidRequest(
            f"style_images: {len(request.style_images)} given, at most {config.limits.max_styles} allowed"
        )
    has_content, has_style = bool(request.content_image), bool(request.style_images)
    options = options_from_pb(request.options, config, model.manifest, has_content, has_style)
    _check_init(request, options)
    sources: list[tuple[int, int]] = []
    if has_content:
        if request.options.width_px or request.options.height_px:
            raise InvalidRequest(
                "options.width_px/height_px: only for texture synthesis; the content image sets the size"
            )
        sources.append(images.probe(request.content_image, "content_image", config.limits.max_pixels))
        size = _content_size(*sources[-1], options)
    else:
        size = _texture_size(request, options, config)
    style_sources = [_style_size(style, index, max(size), config) for index, style in enumerate(request.style_images)]
    sources += [source for source, _ in style_sources]
    style_sizes = [working for _, working in style_sources]
    if style_sizes and not any(
        (style.blend_weight if style.HasField("blend_weight") else 1.0) > 0 for style in request.style_images
    ):
        raise InvalidRequest("style_images[].blend_weight: all are 0; at least one must be positive")
    if options.init is Init.IMAGE:
        sources.append(images.probe(request.options.init_image, "options.init_image", config.limits.max_pixels))
    working = [size, *style_sizes]
    plan = JobPlan(
        output=size,
        styles=tuple(style_sizes),
        has_content=has_content,
        has_init_image=options.init is Init.IMAGE,
        output_masks=sum(bool(style.mask) for style in request.style_images) + bool(request.options.content_only_mask),
        source_masked=tuple(bool(style.source_mask) for style in request.style_images),
        largest_source_px=max(width * height for width, height in sources) if sources else 0,
        largest_working_px=max(width * height for width, height in working),
        optimizer=options.optimizer,
        lbfgs_history=options.lbfgs_history,
        previews=options.preview_every > 0,
        colour_preservation=options.colour_preservation is not ColourPreservation.NONE,
        content_layers=model.manifest.content_layers,
        style_layers=model.manifest.style_layers,
        whole_max_side_px=model.whole_max_side_px,
        request_bytes=request.ByteSize(),
    )
    _check_scales(size, style_sizes, options)
    _check_untiled(plan, options.tileable)
    _check_sendable(size, config)
    return PlannedJob(model, options, plan)


def job_from_request(
    request: pb.StylizeRequest,
    job_id: str,
    models: Sequence[LossModel],
    config: ServerConfig,
    planned: PlannedJob | None = None,
) -> Job:
    """Decode and validate everything a job needs (``plan_request``'s checks first, unless ``planned`` is its
    result for this request); raises InvalidRequest naming the first problem."""
    planned = planned or plan_request(request, models, config)
    options, plan = planned.options, planned.plan
    content = _content(request, options, config) if plan.has_content else None
    size = (content.shape[3], content.shape[2]) if content is not None else plan.output
    styles = tuple(
        _style(style, index, planned_size, config)
        for index, (style, planned_size) in enumerate(zip(request.style_images, plan.styles, strict=True))
    )
    init_image = None
    if options.init is Init.IMAGE:
        decoded = images.decode(request.options.init_image, "options.init_image", config.limits.max_pixels)
        init_image = images.to_array(decoded, size)
    styles = _style_masks(request, styles, size, config)
    content_only = _content_only(request, size, config)
    _check_overlap(styles, content_only)
    return Job(job_id, planned.model.name, size, content, styles, options, init_image, content_only)


def _losses(losses: events.Losses) -> pb.Losses:
    return pb.Losses(total=losses.total, content=losses.content, style=losses.style, tv=losses.tv)


def to_response(event: events.Event) -> pb.StylizeResponse:
    """One stream message for one domain event."""
    match event:
        case events.Queued():
            return pb.StylizeResponse(queued=pb.JobQueued(job_id=event.job_id, position=event.position))
        case events.Started():
            return pb.StylizeResponse(started=pb.JobStarted(
                job_id=event.job_id, model=event.model, width=event.width, height=event.height,
                max_evaluations=event.max_evaluations, optimizer=_OPTIMIZER_TO_PB[event.optimizer], device=event.device,
                scales=event.scales,
            ))  # fmt: skip
        case events.ScaleStarted():
            return pb.StylizeResponse(scale_started=pb.ScaleStarted(
                scale=event.scale, scales=event.scales, width=event.width, height=event.height,
                max_evaluations=event.max_evaluations,
            ))  # fmt: skip
        case events.Progress():
            return pb.StylizeResponse(progress=pb.Progress(
                iteration=event.iteration, evaluations=event.evaluations, losses=_losses(event.losses),
                elapsed_s=event.elapsed_s,
            ))  # fmt: skip
        case events.Preview():
            return pb.StylizeResponse(
                preview=pb.Preview(iteration=event.iteration, image=event.image, format=_FORMAT_TO_PB[event.format])
            )
        case events.Result():
            t = event.timings
            return pb.StylizeResponse(result=pb.Result(
                image=event.image, format=_FORMAT_TO_PB[event.format], width=event.width, height=event.height,
                losses=_losses(event.losses), iterations=event.iterations, evaluations=event.evaluations,
                timings=pb.Timings(
                    queued_s=t.queued_s, warmup_s=t.warmup_s, optimise_s=t.optimise_s, total_s=t.total_s,
                    evaluate_s=t.evaluate_s, step_s=t.step_s, host_s=t.host_s,
                ),
                stop_reason=_STOP_REASON_TO_PB[event.stop_reason], full_size_evaluations=event.full_size_evaluations,
            ))  # fmt: skip
    raise TypeError(f"not an event: {event!r}")


def describe(models: Sequence[LossModel], config: ServerConfig) -> pb.DescribeModelResponse:
    """What the server runs and the limits it enforces."""
    infos = []
    for model in models:
        m = model.manifest
        defaults = m.default_loss_weights
        infos.append(pb.ModelInfo(
            name=model.name, weights=m.weights, weights_sha256=m.weights_sha256, pooling=m.pooling,
            preprocessing=m.preprocessing, content_layers=m.content_layers, style_layers=m.style_layers,
            default_content_weight=defaults.content, default_style_weight=defaults.style, default_tv_weight=defaults.tv,
            device=model.device, opset=m.opset, exporter=m.exporter, recipe=m.recipe or "", seed=m.seed,
        ))  # fmt: skip
    limits = pb.Limits(
        max_pixels=config.limits.max_pixels,
        max_message_bytes=config.limits.max_message_bytes,
        max_styles=config.limits.max_styles,
        max_evaluations=config.limits.max_evaluations,
        max_concurrent=config.limits.max_concurrent,
        max_queue=config.limits.max_queue,
        max_regions=spatial.MAX_REGIONS,
    )
    return pb.DescribeModelResponse(models=infos, limits=limits)
