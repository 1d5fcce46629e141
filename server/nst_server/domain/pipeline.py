"""One job from validated request to encoded image: per scale, targets and canvas, warm-up, optimiser loop, events."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from nst.events import Event, Optimizer, Preview, Progress, Result, ScaleStarted, Started, Timings

from . import colour, images, optimise, spatial
from .errors import NonFiniteLoss
from .evaluation import Evaluator, FloatArray, ShouldStop
from .job import ColourPreservation, Init, Job
from .model import LossModel
from .schedule import MIN_IMPROVEMENT_WINDOW, carry_h0_gamma, full_size_fraction, job_schedule
from .targets import job_targets, layer_weights

GRAY = 0.5  # the flat start image of Init.GRAY


def initial_canvas(init: Init, job: Job, styles: tuple[FloatArray, ...]) -> FloatArray:
    """Where the optimisation starts, at the first scale's size: the photo (as it is, or in the palette of
    ``styles``, the style images as their targets see them), the caller's image, gray or noise."""
    width, height = job_schedule(job)[0].size
    if init is Init.CONTENT and job.content is not None:
        return images.resize(job.content, (width, height)).copy()
    if init is Init.MATCHED and job.content is not None and styles:
        palette = colour.blended_moments(styles, [style.blend_weight for style in job.styles])
        return images.resize(colour.match_moments(job.content, *palette), (width, height)).copy()
    if init is Init.IMAGE and job.init_image is not None:
        return images.resize(job.init_image, (width, height)).copy()
    if init is Init.GRAY:
        return np.full((1, 3, height, width), GRAY, np.float32)
    return np.random.default_rng(job.options.seed).random((1, 3, height, width), dtype=np.float32)


def _styles_for_colour(job: Job) -> tuple[FloatArray, ...]:
    """The style images as their targets should see them under the job's colour preservation."""
    mode, content = job.options.colour_preservation, job.content
    if mode is ColourPreservation.NONE or content is None:
        return tuple(style.image for style in job.styles)
    if mode is ColourPreservation.LUMINANCE:
        return tuple(colour.luminance_style(style.image, content) for style in job.styles)
    return tuple(colour.match_colours(style.image, content) for style in job.styles)


@dataclass(frozen=True, slots=True)
class _Scale:
    """What one scale optimises against: its evaluator, the photo at its size (None without one), and with a
    content-only region the map from the optimised variable to the image (``spatial.Pinned``)."""

    evaluate: Evaluator
    content: FloatArray | None
    pinned: spatial.Pinned | None = None

    def image(self, x: FloatArray) -> FloatArray:
        """The image the optimiser's variable ``x`` stands for."""
        return x if self.pinned is None else self.pinned.image(x)


def style_for_scale(style: FloatArray, ratio: float) -> FloatArray:
    """A painting as a scale ``ratio`` times the output's size sees it: resized by the same ratio, so that its
    strokes keep their size relative to the picture at every scale (bench.schedules' ``style=full`` lever keeps
    it whole instead)."""
    return images.resize(style, (max(1, round(style.shape[3] * ratio)), max(1, round(style.shape[2] * ratio))))


def canvas_for_scale(canvas: FloatArray, size: tuple[int, int]) -> FloatArray:
    """The iterate as the next scale starts from it: resized (Lanczos) to that scale's (width, height)."""
    return images.resize(canvas, size)


def _prepare_scale(
    model: LossModel,
    job: Job,
    styles: tuple[FloatArray, ...],
    canvas: FloatArray,
    should_stop: ShouldStop,
) -> _Scale:
    """Targets at the canvas's size; the canvas stands in for a missing photo or style, whose weights are 0.

    Above the server's tile size the targets and the evaluator are tiled (exact, in bounded memory); the
    evaluator then checks ``should_stop`` between tiles as well as the optimiser before each evaluation.
    Masks (``spatial``) are resized to this scale: the styles' source masks guide their targets, and the
    regions go to the evaluator.
    """
    height, width = canvas.shape[2:]
    ratio = width / job.size[0]
    content = images.resize(job.content, (width, height)) if job.content is not None else None
    scaled = [style_for_scale(style, ratio) for style in styles]
    regions = spatial.regions(job, (width, height))
    targets = job_targets(
        model,
        canvas if content is None else content,
        scaled or [canvas],
        [style.blend_weight for style in job.styles] or None,
        should_stop,
        source_guides=spatial.source_guides(job, scaled) if scaled else None,
        per_style=any(style.mask is not None for style in job.styles),
        circular=job.options.tileable,
    )
    options = job.options
    content_weights, style_weights = layer_weights(model.manifest, options, content is not None, bool(styles))
    loss_weights = options.loss_weights or model.manifest.default_loss_weights
    evaluate = model.evaluator(
        (height, width), targets, loss_weights, content_weights, style_weights,
        regions=regions, circular=options.tileable, should_stop=should_stop,
    )  # fmt: skip
    model.warm_up(evaluate, canvas)
    if job.content_only is None or content is None:
        return _Scale(evaluate, content)
    pinned = spatial.Pinned(evaluate, content, spatial.resize_mask(job.content_only, (width, height)))
    return _Scale(pinned, content, pinned)


def _presentable(job: Job, image: FloatArray, content: FloatArray | None) -> FloatArray:
    """What the caller sees of an iterate: under luminance-only transfer, the photo's chroma on its luminance."""
    if job.options.colour_preservation is ColourPreservation.LUMINANCE and content is not None:
        return colour.with_chroma_of(image, content)
    return image


def _reporter(
    job: Job, scale: _Scale, shape: tuple[int, ...], done: tuple[int, int], clock: float, emit: Callable[[Event], None]
) -> Callable[[optimise.Step], None]:
    """The optimiser's per-iteration callback for one scale: Progress always, a Preview when one is due."""
    options = job.options

    def on_step(step: optimise.Step) -> None:
        iteration = done[0] + step.iteration
        emit(Progress(iteration, done[1] + step.evaluations, step.losses, time.perf_counter() - clock))
        if options.preview_every and iteration % options.preview_every == 0:  # encode only when due
            image = _presentable(job, scale.image(step.x.reshape(shape).astype(np.float32)), scale.content)
            emit(Preview(iteration, images.encode(image, options.output_format), options.output_format))

    return on_step


def _optimise(
    job: Job, optimiser: optimise.Optimiser, canvas: FloatArray, budget: int,
    on_step: Callable[[optimise.Step], None], should_stop: ShouldStop, h0_gamma: float | None,
) -> optimise.Outcome:  # fmt: skip
    options = job.options
    converged = optimise.Plateau(options.min_improvement, MIN_IMPROVEMENT_WINDOW)
    run = optimise.Run(canvas, budget, on_step, should_stop, converged)
    if options.optimizer is Optimizer.LBFGS:
        return optimiser.lbfgs(run, optimise.history_within(options.lbfgs_history, canvas.size), h0_gamma)
    return optimiser.adam(run, options.learning_rate)


def stylize(
    job: Job,
    model: LossModel,
    emit: Callable[[Event], None],
    should_stop: ShouldStop,
    queued_s: float = 0.0,
) -> Result:
    """Run ``job`` to the end, emitting Started, then per scale ScaleStarted, Progress and Preview, last Result."""
    began = time.perf_counter()
    options = job.options
    plans = job_schedule(job)
    emit(
        Started(job.job_id, job.model, *job.size, options.max_evaluations, options.optimizer, model.device, len(plans))
    )
    styles = _styles_for_colour(job)
    canvas = initial_canvas(options.init, job, styles)
    iterations = evaluations = 0
    full_size_evaluations = 0.0
    preparing_s = optimising_s = evaluating_s = stepping_s = 0.0
    clock: float | None = None  # Progress.elapsed_s counts from the end of the first warm-up
    carried: float | None = None  # L-BFGS's gamma (H0 = gamma I) from the previous scale, carried to this one
    for number, (size, budget) in enumerate(((plan.size, plan.evaluations) for plan in plans), start=1):
        prepared = time.perf_counter()
        canvas = canvas_for_scale(canvas, size)
        scale = _prepare_scale(model, job, styles, canvas, should_stop)
        optimising = time.perf_counter()
        preparing_s += optimising - prepared
        clock = clock or optimising
        emit(ScaleStarted(number, len(plans), *size, budget))
        on_step = _reporter(job, scale, canvas.shape, (iterations, evaluations), clock, emit)
        # After the warm-up: its run is preparation, not optimisation.
        optimiser = model.optimiser(scale.evaluate, options.optimizer)
        outcome = _optimise(job, optimiser, canvas, budget, on_step, should_stop, carried)
        evaluating_s += optimiser.evaluate_s
        stepping_s += optimiser.step_s
        canvas = outcome.x.reshape(canvas.shape).astype(np.float32)
        iterations, evaluations = iterations + outcome.iterations, evaluations + outcome.evaluations
        full_size_evaluations += outcome.evaluations * full_size_fraction(size, job.size)
        if outcome.h0_gamma is not None and number < len(plans):
            carried = carry_h0_gamma(outcome.h0_gamma, size, plans[number].size)
        optimising_s += time.perf_counter() - optimising
    if not np.isfinite(canvas).all():  # a NaN gradient moves pixels to NaN, which encode would make black
        raise NonFiniteLoss(f"the image stopped being finite after {evaluations} evaluations (a NaN gradient)")
    image = images.encode(_presentable(job, scale.image(canvas), scale.content), options.output_format)
    finished = time.perf_counter()
    host_s = max(0.0, optimising_s - evaluating_s - stepping_s)
    timings = Timings(
        queued_s, preparing_s, optimising_s, finished - began + queued_s, evaluating_s, stepping_s, host_s
    )
    result = Result(
        image, options.output_format, *job.size, outcome.losses, iterations, evaluations, timings,
        outcome.reason, full_size_evaluations,
    )  # fmt: skip
    emit(result)
    return result
