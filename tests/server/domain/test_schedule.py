"""The schedule of scales: one by default, or coarse to fine with sizes and budgets per scale; state carried
across scales, min_improvement, and the reason a job gives for stopping."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nst.events import Result, ScaleStarted, StopReason
from nst_server.domain import images, optimise, pipeline
from nst_server.domain import schedule as schedule_module
from nst_server.domain.job import Job, Options, Style
from nst_server.domain.schedule import (
    AUTO_GROWTH,
    MIN_IMPROVEMENT_WINDOW,
    ScalePlan,
    auto_scale_count,
    full_size_fraction,
    schedule,
)
from nst_server.runtime.device_optimise import DeviceOptimiser
from nst_server.runtime.graphs import LossGraphs

from tests.images import picture


def _equivalents(plans: list[ScalePlan], size: tuple[int, int]) -> float:
    return sum(plan.evaluations * full_size_fraction(plan.size, size) for plan in plans)


class TestSchedule:
    def test_the_default_is_one_scale_with_the_whole_budget(self) -> None:
        """Neither scales nor coarse_to_fine: Gatys et al.'s single scale, at the output's size."""
        assert schedule((512, 384), Options(max_evaluations=300)) == [ScalePlan((512, 384), 300)]

    def test_server_schedule_halves_down_to_128_px(self) -> None:
        """coarse_to_fine: sizes halve from the output's while the longest side stays at least 128 px."""
        rv = schedule((512, 384), Options(max_evaluations=300, coarse_to_fine=True))
        assert [plan.size for plan in rv] == [(128, 96), (256, 192), (512, 384)]

    def test_scale_count_follows_the_size(self) -> None:
        """Small outputs get one scale, each doubling of the side one more."""
        sizes = ((64, 48), (200, 150), (256, 192), (511, 300), (512, 384), (1024, 768))
        rv = [auto_scale_count(size) for size in sizes]
        assert rv == [1, 1, 2, 2, 3, 4]

    def test_no_image_goes_below_the_minimum_side(self) -> None:
        """A thin output or small style limits the count: no scale takes an image under 32 px."""
        assert auto_scale_count((512, 70)) == 2
        assert auto_scale_count((512, 384), smallest_side=70) == 2

    def test_budgets_grow_geometrically_and_fit_the_full_size_budget(self) -> None:
        """Each coarser scale gets AUTO_GROWTH times the next one's evaluations; weighted by pixels they fit."""
        size = (512, 384)
        rv = schedule(size, Options(max_evaluations=300, coarse_to_fine=True))
        budgets = [plan.evaluations for plan in rv]
        assert len(budgets) == 3
        for coarse, fine in itertools.pairwise(budgets):
            assert coarse == pytest.approx(AUTO_GROWTH * fine, abs=AUTO_GROWTH + 1)
        assert 299 < _equivalents(rv, size) <= 300

    def test_a_single_scale_gets_the_whole_budget(self) -> None:
        """Below two scales' worth of size, the one scale has max_evaluations evaluations."""
        assert schedule((64, 48), Options(max_evaluations=7, coarse_to_fine=True)) == [ScalePlan((64, 48), 7)]

    @pytest.mark.parametrize("budget", [1, 2, 3, 5])
    def test_tiny_budgets_drop_scales_rather_than_overspend(self, budget: int) -> None:
        """When every scale cannot get an evaluation within the budget, coarse scales go, never the budget."""
        rv = schedule((512, 384), Options(max_evaluations=budget, coarse_to_fine=True))
        assert all(plan.evaluations >= 1 for plan in rv)
        assert rv[-1].size == (512, 384)
        assert _equivalents(rv, (512, 384)) <= budget

    def test_callers_scales_keep_their_meaning(self) -> None:
        """scales set: sqrt(2) apart, coarse_evaluations at each coarser scale, max_evaluations at the last."""
        rv = schedule((90, 68), Options(max_evaluations=3, scales=3, coarse_evaluations=2))
        assert rv == [ScalePlan((45, 34), 2), ScalePlan((64, 48), 2), ScalePlan((90, 68), 3)]


class TestPlateau:
    def test_off_by_default(self) -> None:
        """A threshold of 0 never stops, even on a flat loss."""
        plateau = optimise.Plateau(0.0, 3)
        assert not any(plateau(1.0) for _ in range(20))

    def test_stops_when_the_relative_decrease_over_the_window_is_too_small(self) -> None:
        """The loss falling 10% per iteration continues; 0.1% per iteration over 3 iterations stops at 1%."""
        plateau = optimise.Plateau(0.01, 3)
        assert not any(plateau(0.9**k) for k in range(10))
        losses = [0.9**9 * 0.999**k for k in range(1, 5)]
        assert [plateau(loss) for loss in losses] == [False, False, True, True]


def test_lbfgs_says_why_it_stopped() -> None:
    """The budget, or a plateau reported by converged(loss), ends L-BFGS, and Outcome.reason says which."""
    from tests.server.domain.test_optimise import Quadratic, _start

    spent = optimise.lbfgs(Quadratic(), optimise.Run(_start(), 3), 10)
    assert spent.reason is optimise.StopReason.BUDGET
    losses: list[float] = []
    stop_at_once = optimise.Run(_start(), 50, converged=lambda loss: losses.append(loss) or True)
    plateau = optimise.lbfgs(Quadratic(), stop_at_once, 10)
    assert plateau.reason is optimise.StopReason.CONVERGED
    assert (plateau.iterations, len(losses)) == (1, 2)  # the starting loss, then the first iteration's


def test_adam_stops_on_a_plateau() -> None:
    """Adam ends at the first evaluation converged() accepts, with the reason."""
    from tests.server.domain.test_optimise import Quadratic, _start

    rv = optimise.adam(Quadratic(), optimise.Run(_start(), 50, converged=lambda _: True), 0.1)
    assert (rv.evaluations, rv.reason) == (1, optimise.StopReason.CONVERGED)


def test_a_carried_h0_gamma_sets_the_first_step() -> None:
    """Given H0 = gamma I, L-BFGS's first step is gamma * -gradient, not a unit-length step."""
    from tests.server.domain.test_optimise import Quadratic, _start

    points: list[np.ndarray] = []
    objective = Quadratic()

    def recorded(x: Any) -> Any:
        points.append(np.array(x, np.float32).reshape(-1))
        return objective(x)

    rv = optimise.lbfgs(recorded, optimise.Run(_start(), 2), 10, h0_gamma=0.25)
    grad = 2 * (_start() - objective.target).reshape(-1)
    assert np.allclose(points[1], np.clip(points[0] - 0.25 * grad, 0, 1), atol=1e-6)
    assert rv.h0_gamma == pytest.approx(0.5, rel=1e-3)  # s.y / y.y of f = |x - t|^2 is 1/2


@pytest.fixture(name="graphs", scope="module")
def _graphs(model_dir: Path) -> LossGraphs:
    return LossGraphs(model_dir, device="cpu", threads=1)


def _job(size: tuple[int, int] = (64, 48), **options: Any) -> Job:
    content, style = (images.to_array(picture(*size, seed), size) for seed in (1, 2))
    return Job("test", "model", size, content, (Style(style),), Options(max_side_px=max(size), **options))


def _run(graphs: LossGraphs, job: Job) -> tuple[Result, list[Any]]:
    events: list[Any] = []
    result = pipeline.stylize(job, graphs, events.append, lambda: False)
    return result, events


@pytest.mark.slow  # seconds: a three-scale job through the server
def test_server_schedule_runs_its_plan_and_counts_both_ways(
    graphs: LossGraphs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the coarsest side lowered to 48 px, a 96 px job runs 2 scales as planned; Result counts every
    evaluation and their full-size equivalents, within max_evaluations."""
    monkeypatch.setattr(schedule_module, "AUTO_COARSEST_SIDE_PX", 48)
    result, events = _run(graphs, _job((96, 72), max_evaluations=6, coarse_to_fine=True))
    scales = [event for event in events if isinstance(event, ScaleStarted)]
    # 6 = last * (1 + AUTO_GROWTH / 4): the coarse scale gets floor(0.75 * 5.05) = 3, the last what is left, 5
    assert [(s.width, s.height, s.max_evaluations) for s in scales] == [(48, 36, 3), (96, 72, 5)]
    assert result.evaluations == 8
    assert result.full_size_evaluations == pytest.approx(3 / 4 + 5)
    assert result.stop_reason is StopReason.BUDGET


def test_state_is_carried_across_scales(graphs: LossGraphs, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next scale's L-BFGS starts from the last one's gamma (H0 = gamma I), times the pixel-count ratio (on
    whichever placement the server's auto picks for L-BFGS)."""
    calls: list[tuple[float | None, float | None]] = []

    def recording(real: Any) -> Any:
        def run(self: object, run: optimise.Run, history: int, h0_gamma: float | None = None) -> optimise.Outcome:
            outcome: optimise.Outcome = real(self, run, history, h0_gamma)
            calls.append((h0_gamma, outcome.h0_gamma))
            return outcome

        return run

    for placement in (optimise.HostOptimiser, DeviceOptimiser):
        monkeypatch.setattr(placement, "lbfgs", recording(placement.lbfgs))
    _run(graphs, _job(max_evaluations=5, scales=2, coarse_evaluations=5))
    (first_in, first_out), (second_in, _) = calls
    assert first_in is None
    assert first_out is not None
    assert second_in == pytest.approx(first_out * (64 * 48) / (45 * 34))


@pytest.mark.slow  # seconds: a job run to its plateau
def test_min_improvement_stops_and_says_converged(graphs: LossGraphs) -> None:
    """A threshold the loss cannot meet ends the job after the window, well within its budget, as converged."""
    result, _ = _run(graphs, _job(max_evaluations=60, min_improvement=0.99))
    assert result.stop_reason is StopReason.CONVERGED
    assert result.iterations == MIN_IMPROVEMENT_WINDOW
    assert result.evaluations < 60


def test_without_min_improvement_the_budget_is_the_reason(graphs: LossGraphs) -> None:
    """Off by default: the job spends its budget and says so."""
    result, _ = _run(graphs, _job(max_evaluations=4))
    assert (result.stop_reason, result.evaluations, result.full_size_evaluations) == (StopReason.BUDGET, 4, 4.0)


def test_options_default_to_one_scale_and_no_plateau() -> None:
    """Options() runs one scale (scales unset, coarse_to_fine off) and leaves min_improvement off."""
    assert (Options().scales, Options().coarse_to_fine, Options().min_improvement) == (0, False, 0.0)
    assert dataclasses.replace(Options(), scales=1).scales == 1
