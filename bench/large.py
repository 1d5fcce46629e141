"""Large outputs: peak RSS and seconds per evaluation of whole and tiled evaluation at 1024, 2048 and 4096 px.

    python -m bench.large --model models/vgg19 [--runs 1024:whole,1024:tiled,...] [--evaluations 3] [--out F.json]

Each run is a fresh `nst-server` (whole: --tile-size 0; tiled: the default --tile-size) and one single-scale
(scales = 1) L-BFGS job of a synthetic 4:3 picture with a style taken at the same size, through the client. Peak
RSS is the server's VmHWM; seconds per evaluation is the job's own timings.evaluate_s / evaluations (whole runs
exclude their warm-up evaluation, tiled runs have none). /proc/loadavg is recorded before and after each run: on a
shared machine the seconds are only comparable between runs made under the same load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from nst_client import Result, StyleClient
from nst_server.testing import start_server

from tests.images import picture

DEFAULT_RUNS = "1024:whole,1024:tiled,2048:tiled,4096:tiled,2048:whole"
WHOLE_GB_PER_MEGAPIXEL = 3.6  # README's limits table: 0.55 GB + this per megapixel, whole (1024 and 2048 px runs)


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def run(model: Path, side: int, mode: str, evaluations: int, workdir: Path) -> dict[str, object]:
    """One job at ``side`` x 3/4 ``side``: whole or tiled; what it cost."""
    width, height = side, side * 3 // 4
    content, style = workdir / f"content{side}.png", workdir / "style.png"
    picture(width, height, seed=1).save(content)
    picture(256, 192, seed=2).save(style)
    flags = ["--tile-size", "0", "--max-side", "4096"] if mode == "whole" else []
    need = 0.55 + WHOLE_GB_PER_MEGAPIXEL * width * height / 1e6
    if mode == "whole" and need > 0.8 * _available_gb():
        return {"side": side, "mode": mode, "skipped": f"needs about {need:.1f} GB, {_available_gb():.1f} GB free"}
    server = start_server([model], *flags)
    load_before = _loadavg()
    began = time.perf_counter()
    try:
        with StyleClient(server.address) as client:
            result = None
            for event in client.stylize(content, [style], max_side_px=side, max_evaluations=evaluations, scales=1):
                if isinstance(event, Result):
                    result = event
        assert result is not None
        wall = time.perf_counter() - began
        peak_mib = server.memory_mib("VmHWM")
    finally:
        server.terminate()
    return {
        "side": side,
        "mode": mode,
        "size": f"{width}x{height}",
        "evaluations": result.evaluations,
        "seconds_per_evaluation": result.timings.evaluate_s / result.evaluations,
        "job_seconds": wall,
        "peak_rss_gb": peak_mib * 2**20 / 1e9,
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.large", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--runs", default=DEFAULT_RUNS, help=f"SIDE:whole|tiled, comma-separated ({DEFAULT_RUNS})")
    parser.add_argument("--evaluations", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/large.json"))
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for spec in args.runs.split(","):
            side, mode = spec.split(":")
            outcome = run(args.model, int(side), mode, args.evaluations, Path(workdir))
            print(json.dumps(outcome), flush=True)
            results.append(outcome)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
