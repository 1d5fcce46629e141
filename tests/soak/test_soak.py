"""The soak's short form for CI, and its positive control (tests/soak/soak.py has the mix and the criteria).

The full form (2,000 jobs and more) is `python -m tests.soak.soak --model DIR --jobs 2000`; RELIABILITY.md gives its
figures. Here: SHORT_JOBS jobs with a checkpoint every EVERY, the first WARMUP of them warm-up.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.support import report
from tests.soak import soak

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SHORT_JOBS = int(os.environ.get("NST_SOAK_JOBS", "300"))
EVERY = max(1, SHORT_JOBS // 10)
WARMUP = SHORT_JOBS // 3


def _soak(model_dir: Path, leak: bool) -> tuple[dict[str, object], list[str]]:
    server = soak.start(model_dir, leak=leak)
    try:
        result = soak._Driver(server, seed=0).run(SHORT_JOBS, EVERY)
        figures, problems = soak.verdict(result, soak.server_tally(server), WARMUP)
    finally:
        assert server.terminate() == 0
    report("soak_leaking" if leak else "soak", figures | {"problems": problems})
    return figures, problems


def test_the_server_passes_a_short_soak(model_dir: Path) -> None:
    _, problems = _soak(model_dir, leak=False)
    assert problems == []


def test_a_leaking_server_fails_it(model_dir: Path) -> None:
    """The positive control: one output-sized array kept per job must be caught by the memory criteria."""
    _, problems = _soak(model_dir, leak=True)
    assert any("idle RSS" in problem for problem in problems), problems
