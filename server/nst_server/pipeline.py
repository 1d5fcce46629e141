"""One job from validated request to encoded image: per scale, targets and canvas, warm-up, optimiser loop, events."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from nst.events import Event, Optimizer, Preview, Progress, Result, ScaleStarted, Started, Timings

from . import colour, images, optimise, spatial
from .job import ColourPreservation, FloatArray, Init, Job, Options, scale_sizes
from .model import Evaluator, LossModel, ShouldStop
from .targets import job_targets, layer_weights

GRAY = 0.5  # the flat start image of Init.GRAY
# The server's own schedule (Options.scales = 0), after SPST (Galerne et al. 2023), with its constants measured by
# `python -m bench.schedules` (BENCHMARKS.md, "Time to quality"):
AUTO_RATIO = 2.0  # between consecutive scales
AUTO_COARSEST_SIDE_PX = 128  # scales are added while the next coarser one keeps at least this longest side
# Each coarser scale gets this many times the next one's evaluations. SPST gives the coarser scales more (600/200/66/
# 30, a factor 3), but with L-BFGS and its curvature carried across scales the coarse scale is then over-budgeted: to
# reach scipy L-BFGS-B's 200-evaluation loss at 256 px took 89.5 full-size equivalents at 3, 71.5 at 2, 59.5 at 1.5,
# 47.0 at 1, 41.5 at 0.75, 70.0 at 0.5 and 125.8 at 0.25 (one scale: 200).
AUTO_GROWTH = 0.75
MIN_IMPROVEMENT_WINDOW = 10  # iterations over which min_improvement measures the relative decrease


@dataclass(frozen=True, slots=True)
class ScalePlan:
    """One scale of a run: its (width, height) and its budget in evaluations at that size."""

    size: tuple[int, int]
    evaluations: int


def auto_sizes(size: tuple[int, int], scales: int) -> list[tuple[int, int]]:
    """(width, height) of each scale of the server's schedule, coarsest first, AUTO_RATIO apart; the last is size."""
    width, height = size
    return [(round(width / AUTO_RATIO**k), round(height / AUTO_RATIO**k)) for k in reversed(range(scales))]


def auto_scale_count(size: tuple[int, int], smallest_side: int | None = None) -> int:
    """How many scales the server's schedule uses: halve while the longest side stays >= AUTO_COARSEST_SIDE_PX
    and the shortest side of every image (``smallest_side``: the output's and the styles') >= MIN_SIDE_PX."""
    shortest = min(size) if smallest_side is None else smallest_side
    count = 1
    while max(size) / AUTO_RATIO**count >= AUTO_COARSEST_SIDE_PX and shortest / AUTO_RATIO**count >= images.MIN_SIDE_PX:
        count += 1
    return count


def full_size_fraction(scale: tuple[int, int], size: tuple[int, int]) -> float:
    """What one evaluation at ``scale`` costs in full-size evaluations: the ratio of pixel counts."""
    return scale[0] * scale[1] / (size[0] * size[1])


def schedule(size: tuple[int, int], options: Options, smallest_side: int | None = None) -> list[ScalePlan]:
    """The scales of a job, coarsest first, with their budgets.

    ``scales`` unset (0): the server's schedule. The scale count follows from the size (auto_scale_count),
    sizes AUTO_RATIO apart, and each coarser scale gets AUTO_GROWTH times the evaluations of the next, so
    that the budgets, weighted by full_size_fraction, add up to at most ``max_evaluations``: there it counts
    full-size-equivalent evaluations. ``scales`` set: the caller's schedule, sizes SCALE_RATIO apart,
    ``coarse_evaluations`` (default ``max_evaluations``) at each coarser scale and ``max_evaluations`` at the
    last: there it counts the last scale's evaluations.
    """
    budget = options.max_evaluations
    if options.scales:
        sizes = scale_sizes(size, options.scales)
        coarse = options.coarse_evaluations or budget
        return [ScalePlan(s, coarse) for s in sizes[:-1]] + [ScalePlan(sizes[-1], budget)]
    for count in range(auto_scale_count(size, smallest_side), 0, -1):  # fewer scales when the budget is tiny
        sizes = auto_sizes(size, count)
        shares = [AUTO_GROWTH ** (count - 1 - k) for k in range(count)]
        last = budget / sum(share * full_size_fraction(s, size) for share, s in zip(shares, sizes, strict=True))
        plans = [ScalePlan(s, max(1, math.floor(share * last))) for share, s in zip(shares, sizes[:-1], strict=False)]
        left = math.floor(budget - sum(plan.evaluations * full_size_fraction(plan.size, size) for plan in plans) + 1e-9)
        if left >= 1:
            return [*plans, ScalePlan(size, left)]
    raise AssertionError("unreachable: one scale always fits a budget of at least 1")


def job_schedule(job: Job) -> list[ScalePlan]:
    """``schedule`` for a job: its own schedule never takes a style image below MIN_SIDE_PX."""
    sides = [min(job.size)] + [min(style.image.shape[2:]) for style in job.styles]
    return schedule(job.size, job.options, min(sides))


def initial_canvas(init: Init, job: Job) -> FloatArray:
    """Where the optimisation starts, at the first scale's size: the photo, the caller's image, gray or noise."""
    width, height = job_schedule(job)[0].size
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
    """What one scale optimises against: its evaluator, the photo at its size (None without one), and with a
    content-only region the map from the optimised variable to the image (``spatial.Pinned``)."""

    evaluate: Evaluator
    content: FloatArray | None
    pinned: spatial.Pinned | None = None

    def image(self, x: FloatArray) -> FloatArray:
        """The image the optimiser's variable ``x`` stands for."""
        return x if self.pinned is None else self.pinned.image(x)


def _prepare_scale(
    graphs: LossModel,
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
    scaled = [
        images.resize(style, (max(1, round(style.shape[3] * ratio)), max(1, round(style.shape[2] * ratio))))
        for style in styles
    ]
    regions = spatial.regions(job, (width, height))
    targets = job_targets(
        graphs,
        canvas if content is None else content,
        scaled or [canvas],
        [style.blend_weight for style in job.styles] or None,
        should_stop,
        source_guides=spatial.source_guides(job, scaled) if scaled else None,
        per_style=any(style.mask is not None for style in job.styles),
        circular=job.options.tileable,
    )
    options = job.options
    content_weights, style_weights = layer_weights(graphs.manifest, options, content is not None, bool(styles))
    loss_weights = options.loss_weights or graphs.manifest.default_loss_weights
    evaluate = graphs.evaluator(
        (height, width), targets, loss_weights, content_weights, style_weights,
        regions=regions, circular=options.tileable, should_stop=should_stop,
    )  # fmt: skip
    graphs.warm_up(evaluate, canvas)
    if job.content_only is None or content is None:
        return _Scale(evaluate, content)
    pinned = spatial.Pinned(evaluate, content, spatial.resize_mask(job.content_only, (width, height)))
    return _Scale(pinned, content, pinned)


def carry_inverse_hessian_scale(scale: float, size: tuple[int, int], next_size: tuple[int, int]) -> float:
    """L-BFGS's H0 scale for the next, larger scale: the loss averages over positions, so its curvature per
    pixel falls, and the inverse Hessian's scale grows, with the pixel count."""
    return scale * (next_size[0] * next_size[1]) / (size[0] * size[1])


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
    on_step: Callable[[optimise.Step], None], should_stop: ShouldStop, inverse_hessian_scale: float | None,
) -> optimise.Outcome:  # fmt: skip
    options = job.options
    converged = optimise.Plateau(options.min_improvement, MIN_IMPROVEMENT_WINDOW)
    run = optimise.Run(canvas, budget, on_step, should_stop, converged)
    if options.optimizer is Optimizer.LBFGS:
        return optimiser.lbfgs(run, optimise.history_within(options.lbfgs_history, canvas.size), inverse_hessian_scale)
    return optimiser.adam(run, options.learning_rate)


def stylize(
    job: Job,
    graphs: LossModel,
    emit: Callable[[Event], None],
    should_stop: ShouldStop,
    queued_s: float = 0.0,
) -> Result:
    """Run ``job`` to the end, emitting Started, then per scale ScaleStarted, Progress and Preview, last Result."""
    began = time.perf_counter()
    options = job.options
    plans = job_schedule(job)
    emit(
        Started(job.job_id, job.model, *job.size, options.max_evaluations, options.optimizer, graphs.device, len(plans))
    )
    styles = _styles_for_colour(job)
    canvas = initial_canvas(options.init, job)
    iterations = evaluations = 0
    full_size_evaluations = 0.0
    preparing_s = optimising_s = evaluating_s = stepping_s = 0.0
    clock: float | None = None  # Progress.elapsed_s counts from the end of the first warm-up
    carried: float | None = None  # L-BFGS's H0 scale from the previous scale, rescaled to this one
    for number, (size, budget) in enumerate(((plan.size, plan.evaluations) for plan in plans), start=1):
        prepared = time.perf_counter()
        canvas = images.resize(canvas, size)
        scale = _prepare_scale(graphs, job, styles, canvas, should_stop)
        optimising = time.perf_counter()
        preparing_s += optimising - prepared
        clock = clock or optimising
        emit(ScaleStarted(number, len(plans), *size, budget))
        on_step = _reporter(job, scale, canvas.shape, (iterations, evaluations), clock, emit)
        # After the warm-up: its run is preparation, not optimisation.
        optimiser = graphs.optimiser(scale.evaluate, options.optimizer)
        outcome = _optimise(job, optimiser, canvas, budget, on_step, should_stop, carried)
        evaluating_s += optimiser.evaluate_s
        stepping_s += optimiser.step_s
        canvas = outcome.x.reshape(canvas.shape).astype(np.float32)
        iterations, evaluations = iterations + outcome.iterations, evaluations + outcome.evaluations
        full_size_evaluations += outcome.evaluations * full_size_fraction(size, job.size)
        if outcome.inverse_hessian_scale is not None and number < len(plans):
            carried = carry_inverse_hessian_scale(outcome.inverse_hessian_scale, size, plans[number].size)
        optimising_s += time.perf_counter() - optimising
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
