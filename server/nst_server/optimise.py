"""The optimisers that move the pixels: L-BFGS and Adam, both kept inside the [0, 1] box.

One evaluation of loss and gradient is the unit of cost; ``budget`` counts them. Both call ``on_step``
once per iteration with the losses at the iterate and check ``should_stop`` before every evaluation, so
a cancelled job stops within one evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.linalg.blas import saxpy, sdot

from .errors import Cancelled
from .job import Losses
from .model import Evaluation

Objective = Callable[[npt.NDArray[np.floating]], Evaluation]


@dataclass(frozen=True, slots=True)
class Step:
    """One optimiser iteration: the iterate (flat, a view: copy it to keep it) and its losses."""

    iteration: int
    evaluations: int
    losses: Losses
    x: npt.NDArray[np.floating]


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where the optimiser stopped: the last iterate, its losses, and what it cost."""

    x: npt.NDArray[np.floating]
    losses: Losses
    iterations: int
    evaluations: int


NOT_EVALUATED = Losses(np.nan, np.nan, np.nan, np.nan)


def _losses(evaluation: Evaluation) -> Losses:
    return Losses(evaluation.loss, evaluation.content, evaluation.style, evaluation.tv)


class _Pairs:
    """L-BFGS's memory: the last ``size`` steps s and gradient changes y, rows of preallocated float32 arrays.

    Rows are written in place (a ring), so an iteration allocates nothing image-sized.
    """

    def __init__(self, size: int, n: int) -> None:
        self.s = np.empty((size, n), np.float32)
        self.y = np.empty((size, n), np.float32)
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
        sy = float(sdot(self.s[row], self.y[row]))
        if sy > _CURVATURE_EPSILON * float(sdot(self.y[row], self.y[row])):
            self.rho[row] = 1.0 / sy
            self._order.append(row)

    def __len__(self) -> int:
        return len(self._order)

    def clear(self) -> None:
        self._order.clear()

    def apply_inverse_hessian(self, q: npt.NDArray[np.float32]) -> None:
        """q <- H q in place by the two-loop recursion, H0 scaled by the newest pair's s.y / y.y."""
        alphas = []
        for row in reversed(self._order):
            alpha = self.rho[row] * float(sdot(self.s[row], q))
            saxpy(self.y[row], q, a=-alpha)
            alphas.append(alpha)
        if self._order:
            newest = self._order[-1]
            q *= np.float32(1.0 / (self.rho[newest] * float(sdot(self.y[newest], self.y[newest]))))
        for row, alpha in zip(self._order, reversed(alphas), strict=True):
            beta = self.rho[row] * float(sdot(self.y[row], q))
            saxpy(self.s[row], q, a=alpha - beta)


_CURVATURE_EPSILON = 1e-10
_ARMIJO = 1e-4  # sufficient decrease: f(x + t d) <= f(x) + ARMIJO * g.(step taken)
_MAX_BACKTRACKS = 10


def lbfgs(
    objective: Objective,
    x0: npt.NDArray[np.float32],
    budget: int,
    history: int,
    on_step: Callable[[Step], None],
    should_stop: Callable[[], bool],
) -> Outcome:
    """Projected L-BFGS in the [0, 1] box; stops at ``budget`` evaluations or when it cannot improve.

    Each iteration takes the L-BFGS direction over the pixels that are free to move (not held at a bound by
    their gradient), projects the step onto the box and backtracks until the loss drops enough (Armijo).
    The full step is accepted almost always, so an iteration costs one evaluation. Everything is float32
    and in place: scipy's L-BFGS-B did the same job with several times the host time per iteration (see
    BENCHMARKS.md), which on a fast device would have been most of the job.
    """
    x = x0.ravel().astype(np.float32)
    n = x.size
    pairs = _Pairs(history, n)
    grad, direction, trial = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float32)
    evaluations = iterations = 0

    def evaluate(point: npt.NDArray[np.float32]) -> Evaluation:
        nonlocal evaluations
        if should_stop():
            raise Cancelled("job cancelled")
        evaluations += 1
        return objective(point)

    current = evaluate(x)
    loss, losses = current.loss, _losses(current)
    np.copyto(grad, current.grad.ravel())
    while evaluations < budget:
        # Pixels at a bound whose gradient pushes them outwards stay put; the rest follow L-BFGS.
        free = ~(((x <= 0.0) & (grad > 0.0)) | ((x >= 1.0) & (grad < 0.0)))
        np.multiply(grad, free, out=direction)
        pairs.apply_inverse_hessian(direction)
        direction *= np.float32(-1.0)
        direction *= free
        if not float(sdot(grad, direction)) < 0.0:  # H lost positivity on the free set: restart as gradient descent
            pairs.clear()
            np.multiply(grad, free, out=direction)
            direction *= np.float32(-1.0)
        # Before any curvature is known, a step of unit length; afterwards H is scaled and the full step fits.
        step = 1.0 if pairs else 1.0 / max(float(np.linalg.norm(direction)), 1e-30)
        row = pairs.next_row
        for _ in range(_MAX_BACKTRACKS):
            np.multiply(direction, np.float32(step), out=trial)
            trial += x
            np.clip(trial, 0.0, 1.0, out=trial)
            np.subtract(trial, x, out=pairs.s[row])
            decrease = float(sdot(grad, pairs.s[row]))
            if not decrease < 0.0 or evaluations >= budget:
                return Outcome(x, losses, iterations, evaluations)
            candidate = evaluate(trial)
            if candidate.loss <= loss + _ARMIJO * decrease:
                break
            step *= 0.5
        else:
            return Outcome(x, losses, iterations, evaluations)  # no step lowers the loss: as far as it goes
        np.subtract(candidate.grad.ravel(), grad, out=pairs.y[row])
        pairs.keep(row)
        x, trial = trial, x
        np.copyto(grad, candidate.grad.ravel())
        loss, losses = candidate.loss, _losses(candidate)
        iterations += 1
        on_step(Step(iterations, evaluations, losses, x))
    return Outcome(x, losses, iterations, evaluations)


def adam(
    objective: Objective,
    x0: npt.NDArray[np.float32],
    budget: int,
    learning_rate: float,
    on_step: Callable[[Step], None],
    should_stop: Callable[[], bool],
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-8,
) -> Outcome:
    """Adam projected onto [0, 1]. The last of the ``budget`` evaluations is at the returned image."""
    x = x0.ravel().copy()
    first = np.zeros_like(x)
    second = np.zeros_like(x)
    scratch = np.empty_like(x)
    losses = NOT_EVALUATED
    for step in range(1, budget + 1):
        if should_stop():
            raise Cancelled("job cancelled")
        evaluation = objective(x)
        losses = _losses(evaluation)
        on_step(Step(step, step, losses, x))
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
        scratch /= np.sqrt(1 - beta2**step)
        scratch += epsilon
        np.divide(first, scratch, out=scratch)
        scratch *= learning_rate / (1 - beta1**step)
        x -= scratch
        np.clip(x, 0.0, 1.0, out=x)
    return Outcome(x, losses, budget, budget)
