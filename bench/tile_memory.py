"""Peak RSS of one tile's forward and gradient runs, in a fresh process: what the tile size costs in memory.

    python -m bench.tile_memory --model models/vgg19 --tile-size 384

Loads the model as the server does (with its tile graphs), then runs the tile forward graph and the tile
gradient graph once on a random tile of the tile size plus the halo on every side (an interior tile, the
largest), printing the process's VmHWM after loading, after the forward run and after the gradient run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from nst import manifest as mf
from nst_server.runtime.graphs import LossGraphs


def _peak_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError("no VmHWM")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tile_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--tile-size", type=int, default=384)
    args = parser.parse_args(argv)
    graphs = LossGraphs(args.model, device="cpu", tile_px=args.tile_size)
    assert graphs.tiles is not None
    halo, manifest = graphs.tiles.halo_px, graphs.manifest
    side = args.tile_size + 2 * halo
    row = {"tile_px": args.tile_size, "tile_with_halo_px": side, "loaded_gb": _peak_gb()}
    image = np.random.default_rng(0).random((1, 3, side, side), dtype=np.float32)
    inner = np.array([halo, halo, halo + args.tile_size, halo + args.tile_size])
    graphs.tiles.forward.run(None, {mf.IMAGE_INPUT: image, mf.TILE_INNER_INPUT: inner})
    row["after_forward_gb"] = _peak_gb()
    feeds = {
        mf.IMAGE_INPUT: image,
        mf.TILE_INNER_INPUT: inner,
        mf.TILE_CONTENT_SCALES_INPUT: np.ones(len(manifest.content_layers), np.float32),
        mf.TILE_TV_SCALES_INPUT: np.ones(2, np.float32),
    }
    for input_ in graphs.tiles.grad.get_inputs():
        if input_.name.startswith("content_target."):
            stride = 2 ** (int(input_.name[-3]) - 1)  # relu{block}_{i}: block - 1 poolings before it
            channels = int(input_.shape[1])
            feeds[input_.name] = np.zeros((1, channels, side // stride, side // stride), np.float32)
        elif input_.name.startswith("style_grad_matrix."):
            channels = int(input_.shape[0])
            feeds[input_.name] = np.zeros((channels, channels), np.float32)
    graphs.tiles.grad.run(None, feeds)
    row["after_gradient_gb"] = _peak_gb()
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
