"""The optimisers that move the pixels: L-BFGS and Adam, both kept inside the [0, 1] box.

One evaluation of loss and gradient is the unit of cost; a ``Run``'s ``budget`` counts them. Both call the run's
``on_step`` once per iteration with the losses at the iterate and check its ``should_stop`` before every
evaluation, so a cancelled job stops within one evaluation. Both stop early when its ``converged`` (a ``Plateau``)
says the loss has stopped falling, and say in ``Outcome.reason`` why they stopped.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from nst.events import Losses, StopReason

from .errors import Cancelled, NonFiniteLoss
from .evaluation import Evaluation, Evaluator, ShouldStop, never_stop

Objective = Callable[[npt.NDArray[np.floating]], Evaluation]


@dataclass(frozen=True, slots=True)
class Step:
    """One optimiser iteration: its losses, and the iterate on request (``x``), since on the device that is a copy.

    ``x`` is flat and may be a view of the optimiser's buffer: copy it to keep it.
    """

    iteration: int
    evaluations: int
    losses: Losses
    image: Callable[[], npt.NDArray[np.floating]]

    @property
    def x(self) -> npt.NDArray[np.floating]:
        return self.image()


def _held(array: npt.NDArray[np.floating]) -> Callable[[], npt.NDArray[np.floating]]:
    return lambda: array


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where the optimiser stopped: the last iterate, its losses, what it cost, and why it stopped.

    ``h0_gamma`` is L-BFGS's last gamma, H0 = gamma I (s.y / y.y of its newest pair; None before any pair):
    the next scale of a coarse-to-fine run starts from it instead of from a blind first step.
    """

    x: npt.NDArray[np.floating]
    losses: Losses
    iterations: int
    evaluations: int
    reason: StopReason = StopReason.BUDGET
    h0_gamma: float | None = None


class Plateau:
    """``min_improvement``: true once the loss fell by less than ``threshold`` (relative) over ``window`` iterations.

    Off (never true) when ``threshold`` is 0.
    """

    def __init__(self, threshold: float, window: int) -> None:
        self.threshold = threshold
        self._losses: deque[float] = deque(maxlen=window + 1)

    def __call__(self, loss: float) -> bool:
        """Record one iteration's loss; whether the last ``window`` iterations improved too little."""
        self._losses.append(loss)
        if self.threshold <= 0 or len(self._losses) < (self._losses.maxlen or 0):
            return False
        oldest = self._losses[0]
        return oldest - loss < self.threshold * abs(oldest)


def never(_: float) -> bool:
    """The default ``converged``: run to the budget."""
    return False


def _unwatched(_: Step) -> None:
    """The default ``on_step``: nobody is told."""


@dataclass(frozen=True, slots=True)
class Run:
    """One optimisation run, whichever the optimiser and wherever its step runs: one scale of a job.

    It starts at ``x0``, spends at most ``budget`` evaluations, tells ``on_step`` of each iteration, raises
    ``Cancelled`` once ``should_stop()`` (checked before every evaluation), and ends early once ``converged(loss)``.
    """

    x0: npt.NDArray[np.float32]
    budget: int
    on_step: Callable[[Step], None] = _unwatched
    should_stop: ShouldStop = never_stop
    converged: Callable[[float], bool] = never


NOT_EVALUATED = Losses(np.nan, np.nan, np.nan, np.nan)


def _losses(evaluation: Evaluation) -> Losses:
    return Losses(evaluation.loss, evaluation.content, evaluation.style, evaluation.tv)


def _add_scaled(
    y: npt.NDArray[np.float32], a: float, x: npt.NDArray[np.float32], scratch: npt.NDArray[np.float32]
) -> None:
    """y <- y + a x in place, in float32 (BLAS's saxpy, with numpy's own BLAS: the server needs no scipy)."""
    np.multiply(x, np.float32(a), out=scratch)
    y += scratch


Precondition = Callable[[npt.NDArray[np.float32]], None]  # q <- M q in place, M symmetric positive definite


def pyramid_preconditioner(shape: tuple[int, ...], levels: int, base: float) -> Precondition:
    """M = I + sum over k = 1..levels of base**k B_k, B_k replacing each 2**k x 2**k block of each channel by its
    mean (ragged blocks at the right and bottom edges): a symmetric positive definite H0 for L-BFGS.

    With base 4 it is P P^T of a Laplacian-pyramid parametrisation x = z_0 + sum_k up_k(z_k), up_k nearest-neighbour
    upsampling by 2**k: the low frequencies, which the loss's curvature makes slow, take longer steps, at the full
    size and without changing the loss (as coarse to fine would).
    """
    height, width = shape[-2], shape[-1]
    bands = []
    for k in range(1, levels + 1):
        block = 2**k
        rows, cols = np.arange(0, height, block), np.arange(0, width, block)
        row_sizes = np.diff(np.append(rows, height))
        col_sizes = np.diff(np.append(cols, width))
        bands.append((rows, cols, row_sizes, col_sizes, np.float32(base**k) / np.outer(row_sizes, col_sizes)))

    def precondition(q: npt.NDArray[np.float32]) -> None:
        image = q.reshape(-1, height, width)
        boost = np.zeros_like(image)
        for rows, cols, row_sizes, col_sizes, weight in bands:
            sums = np.add.reduceat(np.add.reduceat(image, rows, axis=1), cols, axis=2) * weight
            boost += np.repeat(np.repeat(sums, row_sizes, axis=1), col_sizes, axis=2)
        image += boost

    return precondition


class _Pairs:
    """L-BFGS's memory: the last ``size`` steps s and gradient changes y, rows of preallocated float32 arrays.

    Rows are written in place (a ring), so an iteration allocates nothing image-sized.
    """

    def __init__(self, size: int, n: int, precondition: Precondition | None = None) -> None:
        self.precondition = precondition
        self.s = np.empty((size, n), np.float32)
        self.y = np.empty((size, n), np.float32)
        self._scratch = np.empty(n, np.float32)  # a * s or a * y of the two-loop recursion, without allocating
        self.rho = np.zeros(size)
        self._order: list[int] = []  # rows in use, oldest first

    @property
    def next_row(self) -> int:
        """The row the next pair should be written into: a free one, else the oldest."""
        return len(self._order) if len(self._order) < len(self.rho) else self._order[0]

    def keep(self, row: int) -> None:
        """Keep the pair just written into ``row`` when its curvature is positive (else H would not stay positive)."""
        if row in self._order:  # the oldest pair, overwritten: gone whether or not the new one stays
            self._order.remove(row)
        sy = float(np.dot(self.s[row], self.y[row]))
        if sy > CURVATURE_EPSILON * float(np.dot(self.y[row], self.y[row])):
            self.rho[row] = 1.0 / sy
            self._order.append(row)

    def __len__(self) -> int:
        return len(self._order)

    def clear(self) -> None:
        self._order.clear()

    @property
    def gamma(self) -> float | None:
        """H0 = gamma I: gamma is s.y / y.y of the newest pair (Nocedal and Wright, eq. 7.20); None before one.
        With a preconditioner M, H0 = gamma M and gamma = s.y / y.M y."""
        if not self._order:
            return None
        newest = self._order[-1]
        y = self.y[newest]
        if self.precondition is None:
            return 1.0 / (float(self.rho[newest]) * float(np.dot(y, y)))
        np.copyto(self._scratch, y)
        self.precondition(self._scratch)
        return 1.0 / (float(self.rho[newest]) * float(np.dot(y, self._scratch)))

    def apply_inverse_hessian(self, q: npt.NDArray[np.float32]) -> None:
        """q <- H q in place by the two-loop recursion, H0 scaled by the newest pair's s.y / y.y."""
        alphas = []
        for row in reversed(self._order):
            alpha = self.rho[row] * float(np.dot(self.s[row], q))
            _add_scaled(q, -alpha, self.y[row], self._scratch)
            alphas.append(alpha)
        if (gamma := self.gamma) is not None:
            if self.precondition is not None:
                self.precondition(q)
            q *= np.float32(gamma)
        for row, alpha in zip(self._order, reversed(alphas), strict=True):
            beta = self.rho[row] * float(np.dot(self.y[row], q))
            _add_scaled(q, alpha - beta, self.s[row], self._scratch)


# The history's memory: each pair is 8 bytes per pixel value (s and y, float32), so 10 pairs of a 4096x3072 image
# would be 3 GB. Above this budget fewer pairs are kept (see ``history_within``).
LBFGS_HISTORY_BYTES = 384 * 2**20


def history_within(requested: int, n: int, budget_bytes: int = LBFGS_HISTORY_BYTES) -> int:
    """The L-BFGS pairs kept for ``n`` unknowns: as requested while they fit in ``budget_bytes``, never under 1.

    Of 10 pairs, a 1024x768 image keeps 10, 2048x1536 keeps 5 and 4096x3072 keeps 1 (BENCHMARKS.md: the harm).
    """
    return max(1, min(requested, budget_bytes // (8 * n)))


CURVATURE_EPSILON = 1e-10
ARMIJO = 1e-4  # sufficient decrease: f(x + t d) <= f(x) + ARMIJO * g.(step taken)
MAX_BACKTRACKS = 10


def check_finite(losses: Losses, evaluations: int) -> None:
    """Stop the job, naming the term, once a loss is not a finite number: OK never carries NaN or inf.

    Raises:
        NonFiniteLoss: a term is NaN or infinite.
    """
    terms = {"total": losses.total, "content": losses.content, "style": losses.style, "tv": losses.tv}
    bad = {name: value for name, value in terms.items() if not math.isfinite(value)}
    if bad:
        named = ", ".join(f"{name} {value}" for name, value in bad.items())
        raise NonFiniteLoss(
            f"the loss stopped being a finite number after {evaluations} evaluations ({named}): float32 overflowed; "
            "lower content_weight, style_weight or tv_weight (or leave them at the model's defaults)"
        )


def projected_direction(
    pairs: _Pairs, x: npt.NDArray[np.float32], grad: npt.NDArray[np.float32], direction: npt.NDArray[np.float32]
) -> None:
    """L-BFGS's direction into ``direction``: pixels at a bound whose gradient pushes them outwards stay put, the
    rest follow -H grad; where that is no descent direction, the pairs are forgotten and it is -grad (free pixels)."""
    free = ~(((x <= 0.0) & (grad > 0.0)) | ((x >= 1.0) & (grad < 0.0)))
    np.multiply(grad, free, out=direction)
    pairs.apply_inverse_hessian(direction)
    direction *= np.float32(-1.0)
    direction *= free
    if not float(np.dot(grad, direction)) < 0.0:  # H lost positivity on the free set: restart as gradient descent
        pairs.clear()
        np.multiply(grad, free, out=direction)
        direction *= np.float32(-1.0)


def lbfgs(
    objective: Objective,
    run: Run,
    history: int,
    h0_gamma: float | None = None,
    precondition: Precondition | None = None,
) -> Outcome:
    """Projected L-BFGS in the [0, 1] box, keeping ``history`` pairs; stops at the run's budget, when its
    ``converged(loss)`` says so after an iteration, or when it cannot improve.

    ``h0_gamma``, when given, sets the first direction's length (H0 = gamma I) as the newest pair
    would: a restarted but well-scaled L-BFGS, e.g. from the previous scale of a coarse-to-fine run.
    ``precondition``, when given, makes H0 = gamma M (e.g. ``pyramid_preconditioner``); no job uses one: the pyramid
    lost to plain H0 on both representative losses (BENCHMARKS.md, "Time to quality"), and bench.schedules keeps it
    measurable.

    Each iteration takes the L-BFGS direction over the pixels that are free to move (not held at a bound by
    their gradient), projects the step onto the box and backtracks until the loss drops enough (Armijo).
    The full step is accepted almost always, so an iteration costs one evaluation. Everything is float32
    and in place: scipy's L-BFGS-B did the same job with several times the host time per iteration (see
    BENCHMARKS.md), which on a fast device would have been most of the job.
    """
    budget, converged = run.budget, run.converged
    x = run.x0.ravel().astype(np.float32)
    n = x.size
    pairs = _Pairs(history, n, precondition)
    grad, direction, trial = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float32)
    evaluations = iterations = 0

    def evaluate(point: npt.NDArray[np.float32]) -> Evaluation:
        nonlocal evaluations
        if run.should_stop():
            raise Cancelled("job cancelled")
        evaluations += 1
        evaluation = objective(point)
        check_finite(_losses(evaluation), evaluations)
        return evaluation

    current = evaluate(x)
    loss, losses = current.loss, _losses(current)
    np.copyto(grad, current.grad.ravel())
    converged(loss)  # the starting loss: the first of the window (never enough alone to stop)
    while evaluations < budget:
        projected_direction(pairs, x, grad, direction)
        if pairs:  # H is scaled and the full step fits
            step = 1.0
        elif h0_gamma is not None:  # no curvature yet here, but a known gamma for H0
            step = h0_gamma
        else:  # no curvature known at all: a step of unit length
            step = 1.0 / max(float(np.linalg.norm(direction)), 1e-30)
        row = pairs.next_row
        for _ in range(MAX_BACKTRACKS):
            np.multiply(direction, np.float32(step), out=trial)
            trial += x
            np.clip(trial, 0.0, 1.0, out=trial)
            np.subtract(trial, x, out=pairs.s[row])
            decrease = float(np.dot(grad, pairs.s[row]))
            if evaluations >= budget:
                return Outcome(x, losses, iterations, evaluations, StopReason.BUDGET, pairs.gamma)
            if not decrease < 0.0:
                return Outcome(x, losses, iterations, evaluations, StopReason.CONVERGED, pairs.gamma)
            candidate = evaluate(trial)
            if candidate.loss <= loss + ARMIJO * decrease:
                break
            step *= 0.5
        else:  # no step lowers the loss: as far as it goes
            return Outcome(x, losses, iterations, evaluations, StopReason.CONVERGED, pairs.gamma)
        np.subtract(candidate.grad.ravel(), grad, out=pairs.y[row])
        pairs.keep(row)
        x, trial = trial, x
        np.copyto(grad, candidate.grad.ravel())
        loss, losses = candidate.loss, _losses(candidate)
        iterations += 1
        run.on_step(Step(iterations, evaluations, losses, _held(x)))
        if converged(loss):
            return Outcome(x, losses, iterations, evaluations, StopReason.CONVERGED, pairs.gamma)
    return Outcome(x, losses, iterations, evaluations, StopReason.BUDGET, pairs.gamma)


def adam_schedule(learning_rate: float, beta1: float, beta2: float, step: int) -> tuple[np.float32, np.float32]:
    """Adam's bias corrections at ``step`` (from 1), worked out in float64 and used in float32: the step size
    lr / (1 - beta1^t) and the second moment's sqrt(1 - beta2^t)."""
    return np.float32(learning_rate / (1 - beta1**step)), np.float32(np.sqrt(1 - beta2**step))


def adam(
    objective: Objective, run: Run, learning_rate: float, beta1: float = 0.9, beta2: float = 0.999,
    epsilon: float = 1e-8,
) -> Outcome:  # fmt: skip
    """Adam projected onto [0, 1]. The last evaluation is at the returned image; the run's ``converged(loss)``
    after an evaluation ends the run there."""
    budget = run.budget
    x = run.x0.ravel().copy()
    first = np.zeros_like(x)
    second = np.zeros_like(x)
    scratch = np.empty_like(x)
    losses = NOT_EVALUATED
    for step in range(1, budget + 1):
        if run.should_stop():
            raise Cancelled("job cancelled")
        evaluation = objective(x)
        losses = _losses(evaluation)
        check_finite(losses, step)
        run.on_step(Step(step, step, losses, _held(x)))
        if run.converged(losses.total):
            return Outcome(x, losses, step, step, StopReason.CONVERGED)
        if step == budget:
            break
        grad = evaluation.grad.ravel()
        # In place: no image-sized allocation per iteration.
        first *= beta1
        np.multiply(grad, 1 - beta1, out=scratch)
        first += scratch
        np.multiply(grad, grad, out=scratch)
        scratch *= 1 - beta2
        second *= beta2
        second += scratch
        np.sqrt(second, out=scratch)
        rate, correction = adam_schedule(learning_rate, beta1, beta2, step)
        scratch /= correction
        scratch += epsilon
        np.divide(first, scratch, out=scratch)
        scratch *= rate
        x -= scratch
        np.clip(x, 0.0, 1.0, out=x)
    return Outcome(x, losses, budget, budget)


class Optimiser(Protocol):
    """The optimisers above bound to one evaluator, wherever their step runs: on the host (``HostOptimiser``), or
    on the evaluator's device (``device_optimise.DeviceOptimiser``), with the same iterates to float32 round-off.

    ``evaluate_s`` and ``step_s`` are the seconds spent since creation in the loss graph's runs and in the step's
    runs on the device (0 on the host, where the step is the host's own work).
    """

    @property
    def evaluate_s(self) -> float: ...

    @property
    def step_s(self) -> float: ...

    def lbfgs(self, run: Run, history: int, h0_gamma: float | None = None) -> Outcome: ...

    def adam(self, run: Run, learning_rate: float) -> Outcome: ...


class HostOptimiser:
    """``lbfgs`` and ``adam`` above, stepping in numpy on the host, against ``evaluator``."""

    def __init__(self, evaluator: Evaluator) -> None:
        self._evaluator = evaluator
        self._start = evaluator.seconds

    @property
    def evaluate_s(self) -> float:
        return self._evaluator.seconds - self._start

    @property
    def step_s(self) -> float:
        return 0.0

    def lbfgs(self, run: Run, history: int, h0_gamma: float | None = None) -> Outcome:
        return lbfgs(self._evaluator, run, history, h0_gamma)

    def adam(self, run: Run, learning_rate: float) -> Outcome:
        return adam(self._evaluator, run, learning_rate)
