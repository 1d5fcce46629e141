"""One loss+gradient evaluation three ways: the exported graph in onnxruntime, PyTorch eager, torch.compile.

Each measurement runs in its own process (`python -m bench.evaluation METHOD ...` prints one JSON line), so
its peak resident memory is its own; the onnxruntime one never imports torch, as in the server. Same
weights (seeded, exported by `nst-export --weights random`), same images, same thread count, same loss
(the one nst_export.reference writes in PyTorch).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

WARM_UP = 2
SEED = 0


def image_size(longest_side: int) -> tuple[int, int]:
    """(height, width) of a 4:3 landscape image, the shape of the README's demo photo."""
    return longest_side * 3 // 4, longest_side


def images(longest_side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded content, style and canvas images, float32 NCHW in [0, 1]."""
    rng = np.random.default_rng(SEED)
    shape = (1, 3, *image_size(longest_side))
    return tuple(rng.random(shape, dtype=np.float32) for _ in range(3))  # type: ignore[return-value]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    for line in open("/proc/self/status"):  # noqa: SIM115
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _time(evaluate: Any, repeats: int) -> list[float]:
    for _ in range(WARM_UP):
        evaluate()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        evaluate()
        timings.append(time.perf_counter() - start)
    return timings


def measure_onnxruntime(model_dir: Path, longest_side: int, threads: int, repeats: int, device: str) -> dict[str, Any]:
    from nst_server.domain.targets import job_targets
    from nst_server.runtime.graphs import LossGraphs

    graphs = LossGraphs(model_dir, device=device, threads=threads)  # type: ignore[arg-type]
    content, style, canvas = images(longest_side)
    targets = job_targets(graphs, content, [style], None)
    evaluate = graphs.evaluator(content.shape[2:], targets, graphs.manifest.default_loss_weights)
    before = _current_rss_mb()
    timings = _time(lambda: evaluate(canvas), repeats)
    return {"timings_s": timings, "loss": evaluate(canvas).loss, "rss_before_mb": before, "device": graphs.device}


def _torch_loss(model_dir: Path, pooling: str, threads: int) -> tuple[Any, Any, Any]:
    """torch, the PyTorch model with the export's weights (same seed, same initialisation), and the manifest."""
    import torch
    from nst_export.vgg import VGG19Features, deepest_layer
    from nst_export.weights import init_random, init_ranvgg, weights_sha256
    from nst_server.runtime.graphs import LossGraphs

    torch.set_num_threads(threads)
    manifest = LossGraphs(model_dir, device="cpu").manifest
    model = VGG19Features(deepest_layer(manifest.content_layers + manifest.style_layers), pooling)  # type: ignore[arg-type]
    seed = SEED if manifest.seed is None else manifest.seed
    if manifest.weights == "ranvgg":  # the export's own seeded weights, made again from the manifest's record
        init_ranvgg(model, seed, manifest.preprocessing)
    elif manifest.weights == "random":
        init_random(model, seed)
    else:
        raise ValueError(f"{model_dir}: {manifest.weights} weights cannot be made again here; use a seeded export")
    if weights_sha256(model) != manifest.weights_sha256:
        raise ValueError(f"{model_dir}: its weights are not those of {manifest.weights} seed {seed} here")
    return torch, model, manifest


def measure_torch(
    model_dir: Path, longest_side: int, threads: int, repeats: int, pooling: str, compiled: bool
) -> dict[str, Any]:
    torch, model, manifest = _torch_loss(model_dir, pooling, threads)
    from nst_export import reference

    content, style, canvas = (torch.from_numpy(array) for array in images(longest_side))
    flavour, layers = manifest.preprocessing, (manifest.content_layers, manifest.style_layers)
    target = reference.Targets(
        content=reference.targets(model, content, flavour, *layers).content,
        gram=reference.targets(model, style, flavour, *layers).gram,
    )
    weights = manifest.default_loss_weights
    n_style = len(manifest.style_layers)

    def loss_and_grad(image: Any) -> tuple[Any, Any]:
        # What a PyTorch user writes: forward, the Gatys loss, backward to the image.
        terms = reference.gatys_loss(
            model,
            image,
            flavour,
            target,
            (weights.content, weights.style, weights.tv),
            (1.0,) * len(manifest.content_layers),
            (1.0 / n_style,) * n_style,
        )
        return terms.total, terms.grad

    run = torch.compile(loss_and_grad) if compiled else loss_and_grad
    before = _current_rss_mb()
    compile_s = None
    if compiled:
        start = time.perf_counter()
        run(canvas)
        compile_s = time.perf_counter() - start
    timings = _time(lambda: run(canvas), repeats)
    return {
        "timings_s": timings,
        "loss": float(run(canvas)[0]),
        "rss_before_mb": before,
        "compile_s": compile_s,
        "device": "cpu",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.evaluation")
    parser.add_argument("method", choices=("onnxruntime", "torch-eager", "torch-compile"))
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--pooling", choices=("max", "avg"), required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    if args.method == "onnxruntime":
        result = measure_onnxruntime(args.model, args.size, args.threads, args.repeats, args.device)
    else:
        result = measure_torch(
            args.model, args.size, args.threads, args.repeats, args.pooling, compiled=args.method == "torch-compile"
        )
    height, width = image_size(args.size)
    seconds = median(result["timings_s"])
    result |= {
        "method": args.method,
        "pooling": args.pooling,
        "size": args.size,
        "height": height,
        "width": width,
        "threads": args.threads,
        "median_s": seconds,
        "peak_rss_mb": _peak_rss_mb(),
    }
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
