"""One job from validated request to encoded image: per scale, targets and canvas, warm-up, optimiser loop, events."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import colour, images, optimise
from .job import (
    ColourPreservation,
    Event,
    FloatArray,
    Init,
    Job,
    Optimizer,
    Preview,
    Progress,
    Result,
    ScaleStarted,
    Started,
    Timings,
    scale_sizes,
)
from .model import Evaluator, LossModel
from .targets import job_targets, layer_weights

GRAY = 0.5  # the flat start image of Init.GRAY


def initial_canvas(init: Init, job: Job) -> FloatArray:
    """Where the optimisation starts, at the first scale's size: the photo, the caller's image, gray or noise."""
    width, height = scale_sizes(job.size, job.options.scales)[0]
    if init is Init.CONTENT and job.content is not None:
        return images.resize(job.content, (width, height)).copy()
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
    """What one scale optimises against: its evaluator, and the photo at its size (None without one)."""

    evaluate: Evaluator
    content: FloatArray | None


def _prepare_scale(graphs: LossModel, job: Job, styles: tuple[FloatArray, ...], canvas: FloatArray) -> _Scale:
    """Targets at the canvas's size; the canvas stands in for a missing photo or style, whose weights are 0."""
    height, width = canvas.shape[2:]
    ratio = width / job.size[0]
    content = images.resize(job.content, (width, height)) if job.content is not None else None
    scaled = [
        images.resize(style, (max(1, round(style.shape[3] * ratio)), max(1, round(style.shape[2] * ratio))))
        for style in styles
    ]
    targets = job_targets(
        graphs,
        canvas if content is None else content,
        scaled or [canvas],
        [style.blend_weight for style in job.styles] or None,
    )
    options = job.options
    content_weights, style_weights = layer_weights(graphs.manifest, options, content is not None, bool(styles))
    loss_weights = options.loss_weights or graphs.manifest.default_loss_weights
    evaluate = graphs.evaluator((height, width), targets, loss_weights, content_weights, style_weights)
    graphs.warm_up(evaluate, canvas)
    return _Scale(evaluate, content)


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
            image = _presentable(job, step.x.reshape(shape).astype(np.float32), scale.content)
            emit(Preview(iteration, images.encode(image, options.output_format), options.output_format))

    return on_step


def _optimise(
    job: Job, scale: _Scale, canvas: FloatArray, budget: int, on_step: Callable[[optimise.Step], None],
    should_stop: Callable[[], bool],
) -> optimise.Outcome:  # fmt: skip
    options = job.options
    if options.optimizer is Optimizer.LBFGS:
        return optimise.lbfgs(scale.evaluate, canvas, budget, options.lbfgs_history, on_step, should_stop)
    return optimise.adam(scale.evaluate, canvas, budget, options.learning_rate, on_step, should_stop)


def stylize(
    job: Job,
    graphs: LossModel,
    emit: Callable[[Event], None],
    should_stop: Callable[[], bool],
    queued_s: float = 0.0,
) -> Result:
    """Run ``job`` to the end, emitting Started, then per scale ScaleStarted, Progress and Preview, last Result."""
    began = time.perf_counter()
    options = job.options
    sizes = scale_sizes(job.size, options.scales)
    budgets = [options.coarse_evaluations or options.max_evaluations] * (len(sizes) - 1) + [options.max_evaluations]
    emit(
        Started(job.job_id, job.model, *job.size, options.max_evaluations, options.optimizer, graphs.device, len(sizes))
    )
    styles = _styles_for_colour(job)
    canvas = initial_canvas(options.init, job)
    iterations = evaluations = 0
    preparing_s = optimising_s = evaluating_s = 0.0
    clock: float | None = None  # Progress.elapsed_s counts from the end of the first warm-up
    for number, (size, budget) in enumerate(zip(sizes, budgets, strict=True), start=1):
        prepared = time.perf_counter()
        canvas = images.resize(canvas, size)
        scale = _prepare_scale(graphs, job, styles, canvas)
        optimising = time.perf_counter()
        preparing_s += optimising - prepared
        clock = clock or optimising
        emit(ScaleStarted(number, len(sizes), *size, budget))
        on_step = _reporter(job, scale, canvas.shape, (iterations, evaluations), clock, emit)
        warm_up_s = scale.evaluate.seconds  # the warm-up's run, if this size was new: preparation, not optimisation
        outcome = _optimise(job, scale, canvas, budget, on_step, should_stop)
        evaluating_s += scale.evaluate.seconds - warm_up_s
        canvas = outcome.x.reshape(canvas.shape).astype(np.float32)
        iterations, evaluations = iterations + outcome.iterations, evaluations + outcome.evaluations
        optimising_s += time.perf_counter() - optimising
    image = images.encode(_presentable(job, canvas, scale.content), options.output_format)
    finished = time.perf_counter()
    timings = Timings(queued_s, preparing_s, optimising_s, finished - began + queued_s, evaluating_s)
    result = Result(image, options.output_format, *job.size, outcome.losses, iterations, evaluations, timings)
    emit(result)
    return result
