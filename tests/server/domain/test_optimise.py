"""The host optimisers on a known objective: budget, box constraints, progress events and cancellation."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from nst_server.domain.errors import Cancelled
from nst_server.domain.evaluation import Evaluation
from nst_server.domain.optimise import Run, Step, adam, lbfgs, pyramid_preconditioner
from scipy.optimize import Bounds, minimize

SHAPE = (1, 3, 8, 8)


class Quadratic:
    """f(x) = sum((x - t)^2) with half of t outside [0, 1], so the box decides the answer: clip(t, 0, 1)."""

    def __init__(self) -> None:
        self.target = np.random.default_rng(0).uniform(-0.5, 1.5, SHAPE).astype(np.float32)
        self.grad = np.empty(SHAPE, np.float32)
        self.calls = 0

    def __call__(self, x: npt.NDArray[np.floating]) -> Evaluation:
        self.calls += 1
        diff = x.reshape(SHAPE) - self.target
        self.grad[...] = 2 * diff
        loss = float(np.sum(diff * diff))
        return Evaluation(loss, loss, 0.0, 0.0, self.grad)

    @property
    def optimum(self) -> npt.NDArray[np.float32]:
        return np.clip(self.target, 0, 1)


def _start() -> npt.NDArray[np.float32]:
    return np.full(SHAPE, 0.5, np.float32)


def test_lbfgs_finds_the_boxed_optimum_within_budget() -> None:
    """L-BFGS-B reaches clip(t, 0, 1), never leaves the box and reports one step per iteration."""
    objective, steps = Quadratic(), []
    rv = lbfgs(objective, Run(_start(), budget=50, on_step=steps.append), history=10)
    assert np.allclose(rv.x.reshape(SHAPE), objective.optimum, atol=1e-4)
    assert rv.x.min() >= 0.0
    assert rv.x.max() <= 1.0
    assert rv.evaluations == objective.calls <= 50
    assert [s.iteration for s in steps] == list(range(1, rv.iterations + 1))
    assert rv.losses.total == steps[-1].losses.total


def test_lbfgs_stops_exactly_at_the_budget() -> None:
    """With a budget smaller than it needs, L-BFGS-B evaluates exactly that many times."""
    objective = Quadratic()
    rv = lbfgs(objective, Run(_start(), budget=3), history=10)
    assert rv.evaluations == objective.calls == 3


def test_adam_spends_the_budget_and_projects_onto_the_box() -> None:
    """Adam evaluates exactly budget times, one step each, stays in [0, 1] and lowers the loss."""
    objective, steps = Quadratic(), []
    rv = adam(objective, Run(_start(), budget=40, on_step=steps.append), learning_rate=0.05)
    assert objective.calls == rv.evaluations == rv.iterations == 40
    assert [s.evaluations for s in steps] == list(range(1, 41))
    assert 0.0 <= rv.x.min() <= rv.x.max() <= 1.0
    assert steps[-1].losses.total < steps[0].losses.total / 4


@pytest.mark.parametrize("optimiser", ["lbfgs", "adam"])
def test_stop_flag_ends_the_run_before_the_next_evaluation(optimiser: str) -> None:
    """Once should_stop turns true, no further evaluation happens and Cancelled is raised."""
    objective = Quadratic()

    def stop_after_two() -> bool:
        return objective.calls >= 2

    def on_step(_: Step) -> None:
        pass

    def run() -> None:
        if optimiser == "lbfgs":
            lbfgs(objective, Run(_start(), 50, on_step, stop_after_two), history=5)
        else:
            adam(objective, Run(_start(), 50, on_step, stop_after_two), learning_rate=0.05)

    with pytest.raises(Cancelled):
        run()
    assert objective.calls == 2


class Boxed:
    """An ill-conditioned, non-separable objective whose box constraints bind: f = |A(x - t)|^2."""

    def __init__(self, n: int = 300) -> None:
        rng = np.random.default_rng(1)
        self.a = (rng.standard_normal((n, n)) / np.sqrt(n) + np.diag(np.geomspace(1, 30, n))).astype(np.float32)
        self.target = rng.uniform(-0.5, 1.5, n).astype(np.float32)
        self.grad = np.empty(n, np.float32)
        self.calls = 0

    def __call__(self, x: npt.NDArray[np.floating]) -> Evaluation:
        self.calls += 1
        residual = self.a @ (x.astype(np.float32) - self.target)
        self.grad[...] = 2 * self.a.T @ residual
        loss = float(residual @ residual)
        return Evaluation(loss, loss, 0.0, 0.0, self.grad)


def _scipy_lbfgsb_loss(objective: Boxed, budget: int, history: int) -> float:
    """scipy's L-BFGS-B on the same problem and budget: the bar the project's L-BFGS must reach."""

    def loss_and_grad(x: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        evaluation = objective(x)
        return evaluation.loss, evaluation.grad.astype(np.float64)

    options = {"maxcor": history, "maxfun": budget, "maxiter": budget, "ftol": 0, "gtol": 0}
    start = np.full(objective.target.size, 0.5)
    result = minimize(loss_and_grad, start, jac=True, method="L-BFGS-B", bounds=Bounds(0, 1), options=options)
    return float(result.fun)


@pytest.mark.parametrize("history", [3, 10])
def test_lbfgs_does_as_well_as_scipy_lbfgsb(history: int) -> None:
    """At an equal budget the projected L-BFGS ends at least as low as scipy's L-BFGS-B, inside the box.

    A history shorter than the run also exercises the memory's reuse of its oldest rows.
    """
    ours = lbfgs(Boxed(), Run(np.full(300, 0.5, np.float32), 60), history)
    reference = _scipy_lbfgsb_loss(Boxed(), 60, history)
    assert 0.0 <= ours.x.min() <= ours.x.max() <= 1.0
    assert ours.losses.total <= reference * 1.001 + 1e-6
    assert ours.evaluations <= 60


def test_pyramid_preconditioner_is_symmetric_positive_definite_and_boosts_low_frequencies() -> None:
    """M = I + sum_k base**k B_k on a ragged 37x53 image: u.Mv = v.Mu, u.Mu > |u|^2, and a constant image,
    which every block mean keeps, is multiplied by 1 + base + base**2 + ..."""
    shape = (1, 3, 37, 53)
    precondition = pyramid_preconditioner(shape, levels=3, base=4.0)
    rng = np.random.default_rng(0)
    u, v = (rng.standard_normal(int(np.prod(shape))).astype(np.float32) for _ in range(2))
    mu, mv = u.copy(), v.copy()
    precondition(mu)
    precondition(mv)
    assert float(np.dot(u, mv)) == pytest.approx(float(np.dot(v, mu)), rel=1e-5)
    assert float(np.dot(u, mu)) > float(np.dot(u, u))
    constant = np.ones_like(u)
    precondition(constant)
    assert np.allclose(constant, 1 + 4 + 16 + 64)
    checkerboard = (np.indices(shape).sum(axis=0) % 2 * 2 - 1).astype(np.float32)  # every even block's mean is 0
    flat = checkerboard.ravel().copy()
    precondition(flat)
    inside = (..., slice(0, 32), slice(0, 48))  # whole 8x8 blocks; the ragged ones at the edges keep a mean
    assert np.allclose(flat.reshape(shape)[inside], checkerboard[inside])


def test_lbfgs_with_a_preconditioner_finds_the_boxed_optimum() -> None:
    """H0 = gamma M changes the path, not the answer: the boxed quadratic's optimum, inside the box."""
    objective = Quadratic()
    rv = lbfgs(objective, Run(_start(), budget=60), 10, precondition=pyramid_preconditioner(SHAPE, 2, 4.0))
    assert np.allclose(rv.x.reshape(SHAPE), objective.optimum, atol=1e-4)
    assert 0.0 <= rv.x.min() <= rv.x.max() <= 1.0
