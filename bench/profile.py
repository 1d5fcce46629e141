"""Where one loss+gradient evaluation spends its time, by operator, from onnxruntime's own profiler.

    python -m bench.profile --model DIR [--size 512] [--threads N] [--repeats 5]

Exports nothing: point it at a model `nst-export` wrote. It prints one row per operator type (milliseconds per
evaluation, share of the evaluation, node count) and the convolutions' achieved GFLOP/s, which is what bounds
how much faster than PyTorch the graph can be: the convolutions' time is a floor no other change removes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

from nst_server.domain.targets import job_targets
from nst_server.runtime.graphs import LossGraphs

from .evaluation import WARM_UP, images
from .flops import convolution_flops


def profile(model_dir: Path, longest_side: int, threads: int, repeats: int) -> dict[str, object]:
    """Milliseconds per evaluation by operator type, over ``repeats`` profiled evaluations after warm-up."""
    with tempfile.TemporaryDirectory() as scratch:
        graphs = LossGraphs(model_dir, device="cpu", threads=threads, profile_dir=Path(scratch))
        content, style, canvas = images(longest_side)
        evaluate = graphs.evaluator(
            content.shape[2:], job_targets(graphs, content, [style], None), graphs.manifest.default_loss_weights
        )
        for _ in range(WARM_UP + repeats):
            evaluate(canvas)
        trace = json.loads(graphs.end_profiling().read_text())
    runs = [event["dur"] for event in trace if event.get("name") == "model_run"][WARM_UP:]
    first_timed = sorted(event["ts"] for event in trace if event.get("name") == "model_run")[WARM_UP]
    by_op: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= first_timed:
            by_op[event["args"]["op_name"]] += event["dur"]
            nodes[event["args"]["op_name"]] += 1
    evaluation_us = sum(runs) / len(runs)
    height, width = content.shape[2:]
    conv_s = by_op["Conv"] / len(runs) / 1e6
    return {
        "size": [width, height],
        "evaluation_ms": evaluation_us / 1e3,
        "conv_gflops_per_s": convolution_flops(height, width) / conv_s / 1e9 if conv_s else None,
        "operators": {
            op: {"ms": us / len(runs) / 1e3, "share": us / len(runs) / evaluation_us, "nodes": nodes[op] // len(runs)}
            for op, us in by_op.most_common()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a directory written by nst-export")
    parser.add_argument("--size", type=int, default=512, help="longest side of the 4:3 image (default 512)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line instead")
    args = parser.parse_args(argv)
    result = profile(args.model, args.size, args.threads, args.repeats)
    if args.json:
        print(json.dumps(result))
        return 0
    width, height = result["size"]  # type: ignore[misc]
    print(f"{width}x{height}: {result['evaluation_ms']:.0f} ms per evaluation; "
          f"convolutions at {result['conv_gflops_per_s']:.0f} GFLOP/s")  # fmt: skip
    print(f"{'operator':<16} {'ms':>8} {'share':>7} {'nodes':>6}")
    for op, row in result["operators"].items():  # type: ignore[attr-defined]
        print(f"{op:<16} {row['ms']:8.1f} {row['share']:7.1%} {row['nodes']:6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
