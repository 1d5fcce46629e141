"""`python -m bench`: every benchmark in one run, written to bench/results/*.json, BENCHMARKS.md and a plot.

Run it on a quiet machine: anything else using the cores shows up in every number.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import formulations, machine, report, service
from .flops import evaluation_flops

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("onnxruntime", "torch-eager", "torch-compile")


def _export(pooling: str, directory: Path) -> Path:
    out = directory / f"random-{pooling}"
    subprocess.run(
        ["nst-export", "--weights", "random", "--seed", "0", "--pooling", pooling, "--out", str(out)],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return out


def _evaluation(method: str, model: Path, pooling: str, size: int, threads: int, device: str) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "bench.evaluation",
        method,
        "--model",
        str(model),
        "--pooling",
        pooling,
        "--size",
        str(size),
        "--threads",
        str(threads),
        "--device",
        device,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:  # torch.compile "where it works": a failure is a result, not a crash
        return {
            "method": method,
            "pooling": pooling,
            "size": size,
            "device": device,
            "error": (done.stderr.strip().splitlines() or ["failed"])[-1],
        }
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    flops = evaluation_flops(result["height"], result["width"])
    return result | {"gflop": flops / 1e9, "gflops_per_s": flops / result["median_s"] / 1e9}


def _profile(model: Path, size: int, threads: int) -> dict[str, Any]:
    """`python -m bench.profile` in its own process, as the evaluations run."""
    command = [sys.executable, "-m", "bench.profile", "--model", str(model), "--size", str(size)]
    done = subprocess.run([*command, "--threads", str(threads), "--json"], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def evaluations(models: dict[str, Path], sizes: list[int], threads: int, devices: list[str]) -> list[dict[str, Any]]:
    rows = []
    for device in devices:
        for pooling, model in models.items():
            for size in sizes:
                for method in METHODS if device == "cpu" else ("onnxruntime",):
                    print(f"bench: {method} {pooling} pooling {size} px on {device}", file=sys.stderr)
                    rows.append(_evaluation(method, model, pooling, size, threads, device))
    return rows


def _devices() -> tuple[list[str], str]:
    """CPU always; CUDA too where onnxruntime offers it (a run that cannot start CUDA is reported, not fatal)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return ["cpu"], "no GPU here (this onnxruntime has no CUDA execution provider): GPU runs skipped"
    return ["cpu", "cuda"], "CUDA execution provider present: onnxruntime also measured with --device cuda"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="longest sides (default 256 512)")
    parser.add_argument("--large", action="store_true", help="add 1024 px to the evaluation benchmark")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for every method (default: all)")
    parser.add_argument("--service-size", type=int, default=512)
    parser.add_argument("--service-evaluations", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes + ([1024] if args.large else [])))
    args.out.mkdir(parents=True, exist_ok=True)
    devices, device_note = _devices()
    print(f"bench: {device_note}", file=sys.stderr)

    about = machine.describe(args.threads) | {"gpu": device_note}
    print("bench: matrix-multiply peak", file=sys.stderr)
    about["matmul_gflops_per_s"] = machine.matmul_peaks(args.threads)
    _write(args.out / "machine.json", about)
    _write(args.out / "formulations.json", formulations.measure(args.threads))
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        models = {pooling: _export(pooling, workdir) for pooling in ("max", "avg")}
        _write(args.out / "evaluation.json", evaluations(models, sizes, args.threads, devices))
        print(f"bench: onnxruntime's profile of one evaluation at {args.service_size} px", file=sys.stderr)
        _write(
            args.out / "profile.json",
            {pooling: _profile(model, args.service_size, args.threads) for pooling, model in models.items()},
        )
        content, style, source = service.inputs(workdir, args.service_size)
        print("bench: optimisers in-process, then the service", file=sys.stderr)
        local = service.in_process(
            models["max"], content, style, args.service_size, args.service_evaluations, args.threads
        )
        remote = service.through_service(
            models["max"], content, style, args.service_size, args.service_evaluations, args.threads
        )
    _write(
        args.out / "service.json",
        {
            "images": source,
            "evaluations": args.service_evaluations,
            "preview_every": service.PREVIEW_EVERY,
            "in_process": local,
            "service": remote,
        },
    )
    report.render(args.out)
    return 0


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"bench: wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
