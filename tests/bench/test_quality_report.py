"""bench.quality's bookkeeping: the balanced loss's style weight, merging sittings, and the figures over pairs."""

from __future__ import annotations

from typing import Any

import pytest

from bench.losses import balanced_style_weight
from bench.quality import _schedules, entry_key, merge, summary


def test_balanced_style_weight_puts_the_style_gradient_at_ten_times_the_content_gradient() -> None:
    """beta * ||grad L_s at beta 1|| = 10 * ||grad L_c||, and a zero gradient is refused rather than divided by."""
    beta = balanced_style_weight(content_grad_norm=2.0, unit_style_grad_norm=0.5)
    assert beta * 0.5 == pytest.approx(10 * 2.0)
    assert balanced_style_weight(3.0, 3.0, ratio=1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="photo plus noise"):
        balanced_style_weight(0.0, 1.0)


def _run(kind: str, seconds: float, final: float, trace: list[tuple[float, float]]) -> dict[str, Any]:
    return {"kind": kind, "seconds": seconds, "final_loss": final, "trace": trace}


def _entry(pair: str, runs: dict[str, Any]) -> dict[str, Any]:
    return {"loss": "ranvgg", "pair": pair, "side": 256, "runs": runs}


def test_merge_joins_runs_of_the_same_case_and_adds_new_cases() -> None:
    """Runs of the same loss, pair and size join; another pair is a case of its own; old entries are random."""
    results = {"machine": {"cpu": "a"}, "sizes": [_entry("a + b", {"scipy-lbfgsb": _run("peer", 10, 1.0, [])})]}
    other = {
        "machine": {"cpu": "b"},
        "sizes": [
            _entry("a + b", {"default": _run("service", 5, 0.9, [])}),
            _entry("c + d", {"default": _run("service", 5, 0.9, [])}),
        ],
    }
    other["machine"] = {"cpu": "a"}
    merge(results, other)
    assert [sorted(e["runs"]) for e in results["sizes"]] == [["default", "scipy-lbfgsb"], ["default"]]
    assert results["sizes"][1]["machine"] == {"cpu": "a"}  # the added case keeps the machine it ran on


def test_runs_of_another_machine_stay_a_case_of_their_own() -> None:
    """The same loss, pair and size on another CPU is not merged into the first: its ratios are its own."""

    def runs(peer_s: float) -> dict[str, Any]:
        return {"scipy-lbfgsb": _run("peer", peer_s, 1.0, []), "default": _run("service", 9, 1.0, [(5.0, 1.0)])}

    results = {"machine": {"cpu": "a"}, "sizes": [_entry("a + b", runs(10))]}
    merge(results, {"machine": {"cpu": "b"}, "sizes": [_entry("a + b", runs(20))]})
    assert [e["runs"]["scipy-lbfgsb"]["seconds"] for e in results["sizes"]] == [10, 20]
    assert results["sizes"][1]["machine"] == {"cpu": "b"}
    rows = [line for line in summary(results).splitlines() if "| default |" in line]
    assert [row.split(" | ")[2] for row in rows] == ["a", "b"]  # one row per machine
    assert "**0.50**" in rows[0]  # 5 s of a's 10 s peer, not of b's
    assert "**0.25**" in rows[1]
    assert entry_key({"side": 512, "runs": {}})[0] == "random"


def test_summary_gives_the_median_and_range_over_pairs() -> None:
    """Three pairs: the median ratio and its range; a run that never reaches the peer counts as not reached."""
    entries = []
    for pair, reached_at, final in (("p1", 2.0, 1.0), ("p2", 5.0, 1.1), ("p3", None, 1.3)):
        trace = [(1.0, 2.0)] + ([(reached_at, 0.5)] if reached_at is not None else [])
        runs = {
            "scipy-lbfgsb": _run("peer", 10.0, 1.0, []),
            "default": _run("service", 9.0, final, trace),
            "single-scale": _run("service", 9.0, 1.0, [(3.0, 0.5)]),
        }
        entries.append(_entry(pair, runs))
    text = summary({"machine": {"cpu": "c"}, "sizes": entries})
    default = next(line for line in text.splitlines() if "| default |" in line)
    assert "| 3 | **0.50** (0.20-not reached) | **1.1000** (1.0000-1.3000) |" in default
    single = next(line for line in text.splitlines() if "| single-scale |" in line)
    assert "**0.30** (0.30-0.30)" in single


def test_schedule_specs_parse_bools_numbers_and_words() -> None:
    """--schedule NAME:key=value,...: true/false are bools (coarse_to_fine), digits ints, {budget} the budget."""
    specs = _schedules(["c2f:coarse_to_fine=true,init=content,max_evaluations={budget},min_improvement=0.002"], 200)
    assert specs == {
        "c2f": {"coarse_to_fine": True, "init": "content", "max_evaluations": 200, "min_improvement": 0.002}
    }
