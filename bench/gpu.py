"""The steps of `bash bench/gpu.sh`, each a subcommand that appends to one JSON file.

    python -m bench.gpu parity     --model DIR --device cuda --json OUT.json
    python -m bench.gpu placement  --model DIR --device cuda --sides 256,512,1024,2048 --json OUT.json
    python -m bench.gpu throughput --model DIR --device cuda --side 512 --jobs 1,2,4 --json OUT.json
    python -m bench.gpu report     --json OUT.json --markdown OUT.md [--benchmarks BENCHMARKS.md]

``placement`` runs ``bench.placement`` once per size in its own process, sampling the GPU's memory in use with
nvidia-smi meanwhile, so each size's peak is its own (CUDA only; on the CPU the peak is "skipped: no CUDA").
``report`` turns the JSON into the markdown section and, with ``--benchmarks``, puts it into BENCHMARKS.md
between the GPU_SH markers. Every step records the device it ran on: a dry run (`gpu.sh --dry-run`) on a CPU
says so in every row and in the section's first line, so its numbers can never pass for a GPU's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

BEGIN, END = "<!-- GPU_SH: begin (written by bench/gpu.sh) -->", "<!-- GPU_SH: end -->"
SKIPPED = "skipped: no CUDA"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _store(path: Path, key: str, value: Any) -> None:
    data = _load(path)
    data[key] = value
    path.write_text(json.dumps(data, indent=1) + "\n")


def machine(args: argparse.Namespace) -> str:
    """The GPU's name (nvidia-smi) or, without one, the CPU's and its core count."""
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader", "--id=0"]
        return "GPU " + subprocess.run(query, capture_output=True, text=True, check=True).stdout.strip()
    from bench.machine import describe

    cpu = describe(0)
    return f"CPU {cpu['cpu']}, {cpu['logical_cpus']} logical cores (no GPU)"


def _context() -> dict[str, Any]:
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(), "load": os.getloadavg()[0]}


def parity(args: argparse.Namespace) -> dict[str, Any]:
    """The exported graphs against PyTorch autograd (``nst_export.parity``) on ``--device``'s provider."""
    from nst_export.cli import PARITY_SIZE
    from nst_export.parity import check_parity, random_images
    from nst_export.vgg import VGG19Features, deepest_layer
    from nst_export.weights import init_random
    from nst_server.runtime.graphs import LossGraphs

    manifest = LossGraphs(args.model, "cpu").manifest
    model = VGG19Features(deepest_layer(manifest.content_layers + manifest.style_layers), manifest.pooling)
    init_random(model, manifest.seed or 0)
    report = check_parity(args.model, model, *random_images(*PARITY_SIZE, seed=manifest.seed or 0), device=args.device)
    print(f"parity on {args.device}: {report}", flush=True)
    return {"device": args.device, "passed": report.passed, "report": str(report), **_context()}


class _MemoryPoller:
    """The GPU's memory in use (nvidia-smi, MiB), sampled every 50 ms while running; ``peak`` above the start."""

    def __init__(self) -> None:
        self.baseline = self._used()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def _used() -> int:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.split()[0])

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._used())

    def __enter__(self) -> _MemoryPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def placement(args: argparse.Namespace) -> dict[str, Any]:
    """``bench.placement`` per size in its own process: s/evaluation and s/iteration host vs device, peak memory."""
    rows, peaks = [], {}
    for side in args.sides.split(","):
        command = [sys.executable, "-m", "bench.placement", "--model", str(args.model), "--device", args.device]
        command += ["--sides", side, "--iterations", str(args.iterations), "--repeats", str(args.repeats)]
        out = args.json.with_suffix(f".placement-{side}.json")
        command += ["--json", str(out)]
        if args.device == "cuda" and shutil.which("nvidia-smi"):
            with _MemoryPoller() as poller:
                subprocess.run(command, check=True)
            peaks[side] = {"peak_mib_above_idle": poller.peak - poller.baseline, "idle_mib": poller.baseline}
        else:
            subprocess.run(command, check=True)
            peaks[side] = SKIPPED
            print(f"peak device memory at {side} px: {SKIPPED}", flush=True)
        rows += json.loads(out.read_text())["rows"]
        out.unlink()
    return {"device": args.device, "rows": rows, "peak_device_memory": peaks, **_context()}


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Jobs per minute through one nst-server with --max-concurrent the largest count, 1, 2, 4... at a time."""
    from nst_client import Result, StyleClient
    from nst_server.testing import start_server
    from PIL import Image

    counts = [int(c) for c in args.jobs.split(",")]
    rng = np.random.default_rng(0)
    images = []
    for name in ("content.png", "style.png"):
        path = args.json.parent / f"throughput-{name}"
        small = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((args.side, args.side * 3 // 4), Image.Resampling.BICUBIC).save(path)
        images.append(path)
    flags = ["--device", args.device, "--max-concurrent", str(max(counts)), "--max-queue", str(max(counts))]
    flags += ["--optimizer-placement", args.placement]
    server = start_server([args.model], *flags, metrics=False, timeout_s=300)
    rows = []
    try:
        with StyleClient(server.address) as client:

            def job(_: int) -> float:
                for event in client.stylize(*images, max_side_px=args.side, max_evaluations=args.evaluations):
                    if isinstance(event, Result):
                        return event.timings.optimise_s
                raise RuntimeError("the stream ended without a result")

            job(0)  # the first job at this size warms the sessions up
            for count in counts:
                start = time.perf_counter()
                with ThreadPoolExecutor(count) as pool:
                    optimise_s = list(pool.map(job, range(count)))
                wall = time.perf_counter() - start
                row = {"concurrent": count, "wall_s": wall, "jobs_per_minute": 60 * count / wall}
                rows.append(row | {"mean_optimise_s": sum(optimise_s) / count})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
    for path in images:
        path.unlink()
    return {
        "device": args.device,
        "placement": args.placement,
        "side": args.side,
        "evaluations": args.evaluations,
        "rows": rows,
        **_context(),
    }


def _placement_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| size | optimizer | placement | loss ms/eval | step ms/it | host ms/it | host CPU ms/it | ms/iteration |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['side']} | {r['optimizer']} | {r['placement']} | {r['loss_ms']:.1f} | {r['step_ms']:.2f} | "
            f"{r['host_ms']:.2f} | {r['host_cpu_ms']:.2f} | {r['iteration_ms']:.1f} |"
        )
    return lines


def markdown(data: dict[str, Any]) -> str:
    """The BENCHMARKS.md section from the JSON of one gpu.sh run."""
    devices = {step.get("device") for step in data.values() if isinstance(step, dict)}
    on_gpu = devices == {"cuda"}
    head = "Measured on a GPU by `bash bench/gpu.sh`."
    if not on_gpu:
        head = "A dry run on the CPU (`bash bench/gpu.sh --dry-run`): no figure here comes from a GPU; the CUDA-only "
        head += "steps were skipped."
    lines = [head, "", f"Machine: {data.get('machine', 'unknown')}", ""]
    if "parity" in data:
        p = data["parity"]
        lines += [f"- Parity with PyTorch on `{p['device']}`: {'passed' if p['passed'] else 'FAILED'} ({p['report']})"]
    if "placement" in data:
        pl = data["placement"]
        lines += ["", f"Per iteration, host against device placement (`{pl['device']}`, load {pl['load']:.1f}):", ""]
        lines += _placement_table(pl["rows"])
        peaks = pl["peak_device_memory"]
        lines += ["", "Peak device memory per size: " + ", ".join(f"{side} px: {peak}" for side, peak in peaks.items())]
    if "throughput" in data:
        t = data["throughput"]
        lines += [
            "",
            f"Throughput, {t['side']} px jobs of {t['evaluations']} evaluations, placement {t['placement']} "
            f"(`{t['device']}`):",
            "",
            "| concurrent jobs | wall s | jobs/minute |",
            "|---|---|---|",
        ]
        lines += [f"| {r['concurrent']} | {r['wall_s']:.1f} | {r['jobs_per_minute']:.2f} |" for r in t["rows"]]
    return "\n".join(lines) + "\n"


def report(args: argparse.Namespace) -> None:
    section = markdown(_load(args.json))
    args.markdown.write_text(section)
    print(section)
    if args.benchmarks:
        text = args.benchmarks.read_text()
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{args.benchmarks}: no {BEGIN} ... {END} markers to write between")
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        args.benchmarks.write_text(f"{before}{BEGIN}\n{section}{END}{after}")
        print(f"wrote the section into {args.benchmarks}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    steps = {name: sub.add_parser(name) for name in ("machine", "parity", "placement", "throughput", "report")}
    for name in ("parity", "placement", "throughput"):
        steps[name].add_argument("--model", type=Path, required=True)
        steps[name].add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    for step in steps.values():
        step.add_argument("--json", type=Path, required=True)
    steps["placement"].add_argument("--sides", default="256,512,1024,2048")
    steps["placement"].add_argument("--iterations", type=int, default=10)
    steps["placement"].add_argument("--repeats", type=int, default=2)
    steps["throughput"].add_argument("--side", type=int, default=512)
    steps["throughput"].add_argument("--evaluations", type=int, default=30)
    steps["throughput"].add_argument("--jobs", default="1,2,4")
    steps["throughput"].add_argument("--placement", default="auto")
    steps["report"].add_argument("--markdown", type=Path, required=True)
    steps["report"].add_argument("--benchmarks", type=Path)
    args = parser.parse_args(argv)
    if args.step == "report":
        report(args)
        return 0
    run = {"machine": machine, "parity": parity, "placement": placement, "throughput": throughput}[args.step]
    _store(args.json, args.step, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
