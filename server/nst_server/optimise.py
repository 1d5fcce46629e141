"""The optimisers that move the pixels: L-BFGS-B (scipy) and Adam, both kept inside the [0, 1] box.

One evaluation of loss and gradient is the unit of cost; ``budget`` counts them. Both call ``on_step``
once per iteration with the losses at the iterate and check ``should_stop`` before every evaluation, so
a cancelled job stops within one evaluation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import Bounds, minimize

from .errors import Cancelled
from .graphs import Evaluation
from .job import Losses

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


class _BudgetSpent(Exception):
    """Raised inside scipy's loop to stop it exactly at the evaluation budget."""


def lbfgs(
    objective: Objective,
    x0: npt.NDArray[np.float32],
    budget: int,
    history: int,
    on_step: Callable[[Step], None],
    should_stop: Callable[[], bool],
) -> Outcome:
    """L-BFGS-B with the [0, 1] box as bounds; stops at ``budget`` evaluations or when it cannot improve."""
    evaluations = 0
    last = NOT_EVALUATED
    accepted = Outcome(x0.ravel().astype(np.float64), NOT_EVALUATED, 0, 0)

    def loss_and_grad(x: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        nonlocal evaluations, last
        if should_stop():
            raise Cancelled("job cancelled")
        if evaluations >= budget:
            raise _BudgetSpent
        evaluation = objective(x)
        evaluations += 1
        last = _losses(evaluation)
        return evaluation.loss, evaluation.grad.ravel().astype(np.float64)

    def callback(intermediate_result: object) -> None:
        nonlocal accepted
        # L-BFGS-B's new iterate is always the point its line search evaluated last.
        x = intermediate_result.x  # type: ignore[attr-defined]
        accepted = Outcome(x, last, accepted.iterations + 1, evaluations)
        on_step(Step(accepted.iterations, evaluations, last, x))

    with contextlib.suppress(_BudgetSpent):
        minimize(
            loss_and_grad, accepted.x, jac=True, method="L-BFGS-B", bounds=Bounds(0.0, 1.0), callback=callback,
            # ftol/gtol 0: the caller's budget decides when to stop, not a scale-dependent tolerance.
            options={"maxcor": history, "maxfun": budget, "maxiter": budget, "ftol": 0.0, "gtol": 0.0},
        )  # fmt: skip
    if accepted.iterations == 0:  # not one iteration completed: report the start
        accepted = Outcome(accepted.x, last, 0, evaluations)
    return Outcome(accepted.x, accepted.losses, accepted.iterations, evaluations)


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
        first += (1 - beta1) * grad
        np.multiply(grad, grad, out=scratch)
        second *= beta2
        second += (1 - beta2) * scratch
        np.sqrt(second, out=scratch)
        scratch /= np.sqrt(1 - beta2**step)
        scratch += epsilon
        np.divide(first, scratch, out=scratch)
        scratch *= learning_rate / (1 - beta1**step)
        x -= scratch
        np.clip(x, 0.0, 1.0, out=x)
    return Outcome(x, losses, budget, budget)
