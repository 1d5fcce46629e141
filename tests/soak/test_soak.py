"""The soak's short form for CI, and its positive control (tests/soak/soak.py has the mix and the criteria).

The full form (2,000 jobs and more) is `python -m tests.soak.soak --model DIR --jobs 2000`; RELIABILITY.md gives the
figures of the runs made. Here: SHORT_JOBS jobs (NST_SOAK_JOBS), a checkpoint every tenth of them after a warm-up of
a third; the leaking control gets half as many, which is plenty for a leak to show.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.support import report
from tests.soak import soak

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SHORT_JOBS = int(os.environ.get("NST_SOAK_JOBS", "300"))


def _soak(model_dir: Path, jobs: int, leak: bool) -> list[str]:
    server = soak.start(model_dir, leak=leak)
    try:
        result = soak.Driver(server, seed=0).run(jobs, max(1, jobs // 10))
        figures, problems = soak.verdict(result, soak.server_tally(server), jobs // 3)
    finally:
        assert server.terminate() == 0
    report("soak_leaking" if leak else "soak", figures | {"problems": problems})
    return problems


def test_the_server_passes_a_short_soak(model_dir: Path) -> None:
    assert _soak(model_dir, SHORT_JOBS, leak=False) == []


def test_a_leaking_server_fails_it(model_dir: Path) -> None:
    """The positive control: one output-sized array kept per job must be caught by the memory criteria."""
    problems = _soak(model_dir, SHORT_JOBS // 2, leak=True)
    assert any("idle RSS" in problem for problem in problems), problems
