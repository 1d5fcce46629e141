"""Host against device placement of the optimiser: per iteration, the loss graph, the step and the host's own work.

    python -m bench.placement [--model DIR] [--device cpu] [--sides 256,512] [--iterations 10] [--repeats 3]
                              [--optimizers lbfgs,adam] [--cuda-tf32 off] [--cuda-conv-search exhaustive]
                              [--json PATH]

Runs the server's own optimisers in-process (``optimise.HostOptimiser`` and ``device_optimise.DeviceOptimiser``)
on one evaluator per size, a 4:3 random picture styled by another, and prints one JSON line per size, optimiser
and placement, medians over ``--repeats`` runs taken in turn (host, device, host, ...) so that a change in load
hits both alike:

- ``cold_ms``: the first run of the loss graph at this size in the process (onnxruntime plans its memory, and on
  CUDA cuDNN picks each convolution's algorithm, by ``--cuda-conv-search``), before any of the runs below;
- ``loss_ms``: one run of the loss graph (per evaluation; on the host placement it includes copying the image in);
- ``step_ms``: the step graphs' runs per iteration (device placement; 0 on the host, where the step is host work);
- ``host_ms``: everything else per iteration, in Python: the numpy step on the host placement, bindings and scalar
  reads on the device placement (what ``Timings.host_s`` measures in the server);
- ``iteration_ms``: the whole run's wall time per iteration (its setup and L-BFGS's extra first evaluation in it);
- ``host_setup_ms``: the host's work once per run (buffers, bindings, the first upload and the last download),
  measured by a run without steps and taken out of ``step_ms``, ``host_ms`` and ``host_cpu_ms``;
- ``host_cpu_ms``: the CPU time of the job's thread per iteration outside the runs: what ``host_ms`` would be on
  an idle machine, where no other process takes the core away mid-iteration (``time.thread_time``; BLAS threads
  of the host step are not in it, so on the host placement it can read low).

Without ``--model`` it exports random weights first (nst-export, a temporary directory). The last line names the
faster placement per optimiser and size, which is what ``graphs.AUTO_PLACEMENT`` should say for this device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any, get_args

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from nst.events import Losses
from nst_server.config import ConvSearch, CudaSettings
from nst_server.domain import optimise
from nst_server.domain.evaluation import Evaluation, WrappedEvaluator
from nst_server.runtime.device_optimise import DeviceOptimiser
from nst_server.runtime.graphs import LossGraphs
from nst_server.runtime.sessions import SessionEvaluator

HISTORY = 10
LEARNING_RATE = 0.02


def export_random(directory: Path) -> Path:
    out = directory / "random-max"
    subprocess.run(
        ["nst-export", "--weights", "random", "--seed", "0", "--out", str(out)], check=True, stderr=subprocess.DEVNULL
    )
    return out


def _image(side: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, side * 3 // 4, side), dtype=np.float32)


def _evaluator(graphs: LossGraphs, side: int) -> SessionEvaluator:
    content, style = graphs.targets(_image(side, 1)), graphs.targets(_image(side, 2))
    feeds = {name: style[name] if name.startswith("gram") else array for name, array in content.items()}
    evaluator = graphs.evaluator((side * 3 // 4, side), feeds, graphs.manifest.default_loss_weights)
    assert isinstance(evaluator, SessionEvaluator)
    return evaluator


class _CountedEvaluator(WrappedEvaluator):
    """``inner`` with the thread CPU time spent in its calls counted (``run_cpu_s``)."""

    def __init__(self, inner: SessionEvaluator) -> None:
        super().__init__(inner)
        self.run_cpu_s = 0.0

    def __call__(self, image: npt.NDArray[np.floating]) -> Evaluation:
        start = time.thread_time()
        result = self.inner(image)
        self.run_cpu_s += time.thread_time() - start
        return result


class _CountedDevice(DeviceOptimiser):
    """The device placement with the thread CPU time spent in its runs counted (``run_cpu_s``)."""

    run_cpu_s = 0.0

    def _run_step(
        self, session: ort.InferenceSession, binding: ort.IOBinding, options: ort.RunOptions | None = None
    ) -> None:
        start = time.thread_time()
        super()._run_step(session, binding, options)
        self.run_cpu_s += time.thread_time() - start

    def _evaluate(self, image: ort.OrtValue, grad: ort.OrtValue) -> Losses:
        start = time.thread_time()
        losses = super()._evaluate(image, grad)
        self.run_cpu_s += time.thread_time() - start
        return losses


def _one_run(graphs: LossGraphs, evaluator: SessionEvaluator, placement: str, method: str, start: np.ndarray,
             iterations: int) -> dict[str, float]:  # fmt: skip
    """Totals of one run of ``iterations`` iterations (L-BFGS: one evaluation more, at the start): seconds by the
    wall clock and by the job thread's CPU time, in the loss graph, in the step graphs and in neither (the host)."""
    counted = _CountedEvaluator(evaluator)
    optimiser: optimise.HostOptimiser | _CountedDevice = (
        optimise.HostOptimiser(counted) if placement == "host" else _CountedDevice(graphs._step_graphs(), evaluator)
    )
    begin, begin_cpu = time.perf_counter(), time.thread_time()
    if method == "lbfgs":
        outcome = optimiser.lbfgs(optimise.Run(start, iterations + 1), HISTORY)
    else:
        outcome = optimiser.adam(optimise.Run(start, iterations), LEARNING_RATE)
    wall, cpu = time.perf_counter() - begin, time.thread_time() - begin_cpu
    run_cpu = counted.run_cpu_s if isinstance(optimiser, optimise.HostOptimiser) else optimiser.run_cpu_s
    return {
        "iterations": outcome.iterations,
        "evaluations": outcome.evaluations,
        "wall_s": wall,
        "loss_s": optimiser.evaluate_s,
        "step_s": optimiser.step_s,
        "host_s": wall - optimiser.evaluate_s - optimiser.step_s,
        "host_cpu_s": cpu - run_cpu,
        "loss": outcome.losses.total,
    }


def _per_iteration(run: dict[str, float], setup: dict[str, float]) -> dict[str, float]:
    """``run``'s figures per iteration. The step's and the host's less ``setup``'s (the same optimiser run for no
    step: buffers, bindings, the first evaluation's upload and the last download), which a job pays once per
    scale, not per iteration; the loss graph's per evaluation and the whole run's per iteration as they are."""
    iterations = max(run["iterations"] - setup["iterations"], 1)
    steps = max(run["iterations"], 1)
    return {
        "host_cpu_ms": 1e3 * (run["host_cpu_s"] - setup["host_cpu_s"]) / iterations,
        "loss_ms": 1e3 * run["loss_s"] / run["evaluations"],
        "step_ms": 1e3 * (run["step_s"] - setup["step_s"]) / iterations,
        "host_ms": 1e3 * (run["host_s"] - setup["host_s"]) / iterations,
        "iteration_ms": 1e3 * run["wall_s"] / steps,
        "host_setup_ms": 1e3 * setup["host_s"],
        "loss": run["loss"],
    }


def measure(graphs: LossGraphs, side: int, methods: list[str], iterations: int, repeats: int) -> list[dict[str, Any]]:
    """One row per optimiser and placement at ``side`` px (4:3)."""
    evaluator = _evaluator(graphs, side)
    cold = time.perf_counter()
    graphs.warm_up(evaluator, _image(side, 3))
    cold_ms = 1e3 * (time.perf_counter() - cold)
    start = _image(side, 3)
    rows = []
    for method in methods:
        runs: dict[str, list[dict[str, float]]] = {"host": [], "device": []}
        for repeat in range(repeats + 1):  # the first round warms the step graphs' sessions up, and is dropped
            for placement in runs:
                setup = _one_run(graphs, evaluator, placement, method, start, 0 if method == "lbfgs" else 1)
                result = _one_run(graphs, evaluator, placement, method, start, iterations)
                if repeat:
                    runs[placement].append(_per_iteration(result, setup))
        for placement, results in runs.items():
            row = {key: median(r[key] for r in results) for key in results[0]}
            rows.append({"side": side, "optimizer": method, "placement": placement, "cold_ms": cold_ms, **row})
    return rows


def _cost(row: dict[str, Any]) -> float:
    """What the placement changes, per iteration. On the CPU both placements run the same loss graph on the same
    memory, so their loss_ms differ only by noise (under load, more than the step itself): compare the step and
    the host's work. On CUDA the host placement's copies are inside loss_ms: compare whole iterations."""
    return float(row["iteration_ms"] if row["device"].startswith("cuda") else row["step_ms"] + row["host_ms"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an exported model directory (default: export random weights)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--sides", default="256,512")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--optimizers", default="lbfgs,adam")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cuda-tf32", choices=("on", "off"), default="off", help="CUDA only, as nst-server's")
    parser.add_argument(
        "--cuda-conv-search", choices=get_args(ConvSearch), default="exhaustive", help="CUDA only, as nst-server's"
    )
    parser.add_argument("--json", type=Path, help="also write every row here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or export_random(Path(scratch))
        cuda = CudaSettings(args.cuda_tf32 == "on", args.cuda_conv_search)
        graphs = LossGraphs(model, args.device, args.threads, placement="device", cuda=cuda)
        rows = []
        for side in (int(s) for s in args.sides.split(",")):
            for row in measure(graphs, side, args.optimizers.split(","), args.iterations, args.repeats):
                row |= {"device": graphs.device, "load": os.getloadavg()[0]}
                if graphs.device != "cpu":  # the CUDA provider's settings; the CPU provider has none
                    row |= {"tf32": args.cuda_tf32, "conv_search": args.cuda_conv_search}
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
                rows.append(row)
    faster = {
        f"{row['optimizer']}@{row['side']}": row["placement"]
        for row in sorted(rows, key=lambda r: -_cost(r))  # the faster one of each pair comes last
    }
    print(json.dumps({"faster": faster}))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "faster": faster}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
