"""Helpers of the reliability suite: figures for RELIABILITY.md, waiting for idle capacity."""

from __future__ import annotations

import json
import os
from pathlib import Path

from nst_server.testing import ServerProcess, poll_until

REPORT_ENV = "NST_RELIABILITY_REPORT"  # a directory: each figure-producing test writes NAME.json there


def report(name: str, figures: dict[str, object]) -> None:
    """Print a test's figures (seen with `pytest -s`) and, if $NST_RELIABILITY_REPORT is set, write them as JSON.

    RELIABILITY.md quotes these, so its numbers come from a command rather than from memory.
    """
    text = json.dumps(figures, sort_keys=True)
    print(f"\nRELIABILITY {name} {text}")
    if folder := os.environ.get(REPORT_ENV):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def wait_idle(server: ServerProcess, timeout_s: float = 30.0) -> None:
    """Wait until the server reports no job running, queued or still finishing (its metrics); fail after
    ``timeout_s``.

    A job stops within one evaluation of its caller leaving, and its slot frees when its worker returns: a little
    after the caller has gone, so capacity is polled for rather than assumed.
    """

    def idle() -> bool:
        samples = server.scrape()
        names = ("nst_jobs_running", "nst_jobs_queued", "nst_jobs_held")
        return all(samples[(name, frozenset())] == 0 for name in names)

    poll_until(idle, timeout_s, "capacity to return (no job running or queued)")
