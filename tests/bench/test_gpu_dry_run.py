"""`bash bench/gpu.sh --dry-run`: the prepared GPU check runs end to end on the CPU, so CI keeps it working.

Every step runs (at small sizes, on the CPU provider) but the CUDA-only ones, which say "skipped: no CUDA"; the
JSON and the markdown section say the run was on the CPU, never that a figure came from a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu

pytestmark = pytest.mark.slow  # minutes: an export, two sizes of both placements and a server

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "bench/gpu.sh", "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("skipped: no CUDA") >= 3, done.stdout  # the install, CUDA parity, peak memory
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["machine"].startswith("CPU")
    assert data["parity"]["passed"]
    assert {step["device"] for step in (data["parity"], data["placement"], data["throughput"])} == {"cpu"}
    rows = data["placement"]["rows"]
    assert {(r["side"], r["optimizer"], r["placement"]) for r in rows} == {
        (side, optimizer, placement)
        for side in (64, 96)
        for optimizer in ("lbfgs", "adam")
        for placement in ("host", "device")
    }
    assert all(r["loss_ms"] > 0 and r["iteration_ms"] >= r["loss_ms"] for r in rows)
    assert [r["concurrent"] for r in data["throughput"]["rows"]] == [1, 2]
    section = (tmp_path / "gpu.md").read_text()
    assert section.startswith("A dry run on the CPU")
    assert "no figure here comes from a GPU" in section
    assert not (tmp_path / "random-max").exists()


def test_report_goes_between_the_markers(tmp_path: Path) -> None:
    """`report --benchmarks` replaces only what lies between the markers, and says a GPU run is one."""
    data = {
        "machine": "GPU test",
        "parity": {"device": "cuda", "passed": True, "report": "gradient 1e-06"},
    }
    (tmp_path / "gpu.json").write_text(json.dumps(data))
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text(f"# B\n\nbefore\n{gpu.BEGIN}\nold\n{gpu.END}\nafter\n")
    argv = ["report", "--json", str(tmp_path / "gpu.json"), "--markdown", str(tmp_path / "gpu.md")]
    gpu.main([*argv, "--benchmarks", str(benchmarks)])
    text = benchmarks.read_text()
    assert "old" not in text
    assert text.startswith("# B\n\nbefore\n")
    assert text.endswith(f"{gpu.END}\nafter\n")
    assert "Measured on a GPU by `bash bench/gpu.sh`." in text
    assert "Parity with PyTorch on `cuda`: passed" in text
