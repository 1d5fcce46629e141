"""What fewer L-BFGS pairs cost: the loss reached in a fixed budget with 10, 5, 2 and 1 pairs of history.

    python -m bench.lbfgs_history --model models/vgg19 [--side 256] [--evaluations 60] [--histories 10,5,2,1]

At large sizes the server keeps fewer pairs (``optimise.history_within``: 384 MiB of history, 10 pairs up to
about 1.6 megapixels, 1 pair at 4096x3072). This runs the server's own L-BFGS in-process on a small synthetic job
(a 4:3 picture styled by another) and prints each history's final loss against 10 pairs'. A small image stands in
for a large one: the optimiser's behaviour per pair, not the image size, is what is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from nst_server.domain import optimise
from nst_server.domain.targets import job_targets
from nst_server.runtime.graphs import LossGraphs

from tests.images import picture


def _array(side: int, seed: int) -> np.ndarray:
    image = picture(side, side * 3 // 4, seed)
    return (np.asarray(image, np.float32) / 255).transpose(2, 0, 1)[None].copy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lbfgs_history", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--evaluations", type=int, default=60)
    parser.add_argument("--histories", default="10,5,2,1")
    args = parser.parse_args(argv)
    graphs = LossGraphs(args.model, device="cpu")
    content, style = _array(args.side, 1), _array(args.side, 2)
    targets = job_targets(graphs, content, [style])
    evaluate = graphs.evaluator(content.shape[2:], targets, graphs.manifest.default_loss_weights)
    results = {}
    for history in (int(h) for h in args.histories.split(",")):
        outcome = optimise.lbfgs(evaluate, optimise.Run(content, args.evaluations), history)
        results[history] = outcome.losses.total
    reference = results[max(results)]
    for history, loss in results.items():
        row = {"history": history, "final_loss": loss, "vs_most_pairs": loss / reference}
        print(json.dumps(row | {"side": args.side, "evaluations": args.evaluations}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
