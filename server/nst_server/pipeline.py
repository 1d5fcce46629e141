"""One job from validated request to encoded image: targets, canvas, warm-up, optimiser loop, events."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from . import images, optimise
from .graphs import FloatArray, LossGraphs
from .job import Event, Init, Job, Optimizer, Preview, Progress, Result, Started, Timings
from .targets import job_targets

log = logging.getLogger(__name__)

GRAY = 0.5


def initial_canvas(init: Init, content: FloatArray, seed: int) -> FloatArray:
    """Where the optimisation starts: the photo, flat gray, or seeded uniform noise."""
    if init is Init.CONTENT:
        return content.copy()
    if init is Init.GRAY:
        return np.full_like(content, GRAY)
    return np.random.default_rng(seed).random(content.shape, dtype=np.float32)


def stylize(
    job: Job,
    graphs: LossGraphs,
    emit: Callable[[Event], None],
    should_stop: Callable[[], bool],
    queued_s: float = 0.0,
) -> Result:
    """Run ``job`` to the end, emitting Started, Progress and Preview events and last the Result."""
    began = time.perf_counter()
    options = job.options
    _, _, height, width = job.content.shape
    evaluate = graphs.evaluator(
        (height, width),
        job_targets(graphs, job.content, job.styles),
        options.loss_weights or graphs.manifest.default_loss_weights,
    )
    canvas = initial_canvas(options.init, job.content, options.seed)
    graphs.warm_up(evaluate, canvas)
    warmed = time.perf_counter()
    emit(Started(job.job_id, job.model, width, height, options.max_evaluations, options.optimizer, graphs.device))

    def on_step(step: optimise.Step) -> None:
        emit(Progress(step.iteration, step.evaluations, step.losses, time.perf_counter() - warmed))
        if options.preview_every and step.iteration % options.preview_every == 0:
            image = step.x.reshape(job.content.shape)
            emit(Preview(step.iteration, images.encode(image, options.output_format), options.output_format))

    if options.optimizer is Optimizer.LBFGS:
        outcome = optimise.lbfgs(evaluate, canvas, options.max_evaluations, options.lbfgs_history, on_step, should_stop)
    else:
        outcome = optimise.adam(evaluate, canvas, options.max_evaluations, options.learning_rate, on_step, should_stop)
    optimised = time.perf_counter()
    image = images.encode(outcome.x.reshape(job.content.shape), options.output_format)
    finished = time.perf_counter()
    result = Result(
        image=image,
        format=options.output_format,
        width=width,
        height=height,
        losses=outcome.losses,
        iterations=outcome.iterations,
        evaluations=outcome.evaluations,
        timings=Timings(queued_s, warmed - began, optimised - warmed, finished - began + queued_s),
    )
    emit(result)
    return result
