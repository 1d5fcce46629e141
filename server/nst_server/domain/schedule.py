"""The schedule of scales: the size of each scale, its budget, and what carries from one scale to the next.

Gatys et al. optimise at one size, and so does a job by default. Running coarse to fine (Gatys et al.,
"Controlling Perceptual Factors in Neural Style Transfer", CVPR 2017; Galerne et al.'s SPST, 2023) gives the
large structures of the style room at a scale where they are cheap; but where the Gram terms dominate the loss,
as they do with trained weights, it ended above one scale at the same budget (BENCHMARKS.md, "Time to quality"),
so it is the caller's choice: ``scales`` or ``coarse_to_fine``. The server's places that name scales (the
codec's limits, the pipeline's loop) take them from here; the client, which never imports the server, names the
caller's schedule as the proto documents it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .images import MIN_SIDE_PX
from .job import Job, Options

SCALE_RATIO = math.sqrt(2)  # between the sizes of consecutive scales of a caller's schedule (Options.scales set)
# The server's coarse-to-fine schedule (Options.coarse_to_fine), after SPST (Galerne et al. 2023), with its
# constants measured by `python -m bench.schedules` (BENCHMARKS.md, "Time to quality"):
AUTO_RATIO = 2.0  # between consecutive scales
AUTO_COARSEST_SIDE_PX = 128  # scales are added while the next coarser one keeps at least this longest side
# Each coarser scale gets this many times the next one's evaluations. SPST gives the coarser scales more (a factor
# 3), but with L-BFGS and its curvature carried across scales the coarse scale is then over-budgeted; 0.75 reached
# scipy's loss soonest of the factors tried (BENCHMARKS.md, "Time to quality", keeps the figures).
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
    while max(size) / AUTO_RATIO**count >= AUTO_COARSEST_SIDE_PX and shortest / AUTO_RATIO**count >= MIN_SIDE_PX:
        count += 1
    return count


def full_size_fraction(scale: tuple[int, int], size: tuple[int, int]) -> float:
    """What one evaluation at ``scale`` costs in full-size evaluations: the ratio of pixel counts."""
    return scale[0] * scale[1] / (size[0] * size[1])


def schedule(size: tuple[int, int], options: Options, smallest_side: int | None = None) -> list[ScalePlan]:
    """The scales of a job, coarsest first, with their budgets.

    By default one scale, the output's, with all of ``max_evaluations``. ``scales`` set: the caller's schedule,
    sizes SCALE_RATIO apart, ``coarse_evaluations`` (default ``max_evaluations``) at each coarser scale and
    ``max_evaluations`` at the last: there it counts the last scale's evaluations. ``coarse_to_fine``: the
    server's schedule. The scale count follows from the size (auto_scale_count), sizes AUTO_RATIO apart, and
    each coarser scale gets AUTO_GROWTH times the evaluations of the next, so that the budgets, weighted by
    full_size_fraction, add up to at most ``max_evaluations``: there it counts full-size-equivalent evaluations.
    """
    budget = options.max_evaluations
    if options.scales:
        sizes = scale_sizes(size, options.scales)
        coarse = options.coarse_evaluations or budget
        return [ScalePlan(s, coarse) for s in sizes[:-1]] + [ScalePlan(sizes[-1], budget)]
    if not options.coarse_to_fine:
        return [ScalePlan(size, budget)]
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


def scale_sizes(size: tuple[int, int], scales: int) -> list[tuple[int, int]]:
    """(width, height) of each scale, coarsest first: scale k of n is size / SCALE_RATIO**(n - k), the last is size."""
    width, height = size
    return [(round(width / SCALE_RATIO**k), round(height / SCALE_RATIO**k)) for k in reversed(range(scales))]


def carry_h0_gamma(gamma: float, size: tuple[int, int], next_size: tuple[int, int]) -> float:
    """L-BFGS's gamma (H0 = gamma I) for the next, larger scale: the loss averages over positions, so its curvature
    per pixel falls, and the inverse Hessian grows, with the pixel count. ("Scale" here means only a pyramid level.)"""
    return gamma * (next_size[0] * next_size[1]) / (size[0] * size[1])
