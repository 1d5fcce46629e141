"""The service at its limit: a 512 px, 100-evaluation job through gRPC and the client against the same work
in-process, the optimisers' host time and final loss (scipy's L-BFGS-B kept here as the baseline the server
replaced), and the server's memory per image size.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from nst_client import Progress, Result, StyleClient
from nst_server.domain import optimise
from nst_server.domain.evaluation import Evaluation
from nst_server.domain.targets import job_targets
from nst_server.runtime.graphs import LossGraphs
from nst_server.testing import ServerProcess, start_server
from PIL import Image
from scipy.optimize import Bounds, minimize

SHARED_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "images"
CONTENT, STYLE = "tubingen.jpg", "starry_night_google.jpg"
PREVIEW_EVERY = 10


def inputs(workdir: Path, longest_side: int) -> tuple[Path, Path, str]:
    """The README demo's photo and painting when ../shared is there, else seeded smooth synthetic images."""
    if (SHARED_IMAGES / CONTENT).exists() and (SHARED_IMAGES / STYLE).exists():
        return SHARED_IMAGES / CONTENT, SHARED_IMAGES / STYLE, f"{CONTENT} + {STYLE}"
    rng = np.random.default_rng(0)
    paths = []
    for name in ("content.png", "style.png"):
        small = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
        image = Image.fromarray(small).resize((longest_side, longest_side * 3 // 4), Image.Resampling.BICUBIC)
        image.save(workdir / name)
        paths.append(workdir / name)
    return paths[0], paths[1], "synthetic (no ../shared/images)"


def _array(path: Path, longest_side: int) -> npt.NDArray[np.float32]:
    image = Image.open(path).convert("RGB")
    image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    return (np.asarray(image, np.float32) / 255).transpose(2, 0, 1)[None].copy()


def scipy_lbfgsb(objective: optimise.Objective, run: optimise.Run, history: int) -> optimise.Outcome:
    """The server's optimiser before this benchmark: scipy's L-BFGS-B with the [0, 1] box as bounds (the run's
    budget counts; its callbacks are not called)."""
    budget, x0 = run.budget, run.x0
    last: list[Evaluation] = []

    def loss_and_grad(x: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        if len(last) >= budget:
            raise StopIteration
        last.append(objective(x))
        return last[-1].loss, last[-1].grad.ravel().astype(np.float64)

    with contextlib.suppress(StopIteration):
        minimize(
            loss_and_grad,
            x0.ravel().astype(np.float64),
            jac=True,
            method="L-BFGS-B",
            bounds=Bounds(0.0, 1.0),
            options={"maxcor": history, "maxfun": budget, "maxiter": budget, "ftol": 0.0, "gtol": 0.0},
        )
    # The loss reported is the best evaluated: scipy stops mid line search at the budget.
    best = min(last, key=lambda e: e.loss)
    return optimise.Outcome(x0, optimise.Losses(best.loss, best.content, best.style, best.tv), 0, len(last))


def in_process(
    model_dir: Path, content: Path, style: Path, longest_side: int, budget: int, threads: int
) -> dict[str, Any]:
    """Bare evaluations back to back, then each optimiser over the same evaluator: host time and final loss."""
    graphs = LossGraphs(model_dir, device="cpu", threads=threads)
    photo, painting = _array(content, longest_side), _array(style, longest_side)
    evaluate = graphs.evaluator(
        photo.shape[2:], job_targets(graphs, photo, [painting], None), graphs.manifest.default_loss_weights
    )
    evaluate(photo)
    start = time.perf_counter()
    for _ in range(budget):
        evaluate(photo)
    bare_s = (time.perf_counter() - start) / budget

    runs: dict[str, Any] = {}
    optimisers: dict[str, Callable[[optimise.Objective, optimise.Run], optimise.Outcome]] = {
        "lbfgs": lambda objective, run: optimise.lbfgs(objective, run, 10),
        "scipy-lbfgsb": lambda objective, run: scipy_lbfgsb(objective, run, 10),
        "adam": lambda objective, run: optimise.adam(objective, run, 0.02),
    }
    for name, run in optimisers.items():
        in_graph = [0.0]

        def timed(x: npt.NDArray[np.floating], in_graph: list[float] = in_graph) -> Evaluation:
            begin = time.perf_counter()
            result = evaluate(x)
            in_graph[0] += time.perf_counter() - begin
            return result

        start = time.perf_counter()
        outcome = run(timed, optimise.Run(photo.copy(), budget))
        total = time.perf_counter() - start
        host = total - in_graph[0]
        runs[name] = {
            "final_loss": outcome.losses.total,
            "evaluations": outcome.evaluations,
            "evaluation_s": in_graph[0] / outcome.evaluations,
            "host_s_per_evaluation": host / outcome.evaluations,
            "host_fraction": host / in_graph[0],
        }
    return {"size": [photo.shape[3], photo.shape[2]], "bare_evaluation_s": bare_s, "optimisers": runs}


def _job(client: StyleClient, content: Path, style: Path, **options: Any) -> dict[str, Any]:
    """One job through the client; wall time from the first progress event to the result, as the caller sees it."""
    first: float | None = None
    iterations = 0
    for event in client.stylize(content, style, timeout_s=3600, **options):
        if isinstance(event, Progress):
            first = first or time.perf_counter()
            iterations = event.iteration
        elif isinstance(event, Result):
            end = time.perf_counter()
            return {
                "evaluations": event.evaluations,
                "iterations": iterations,
                "final_loss": event.losses.total,
                "optimise_s": event.timings.optimise_s,
                "evaluate_s": event.timings.evaluate_s,
                "client_s_after_first_progress": end - (first or end),
            }
    raise RuntimeError("the stream ended without a result")


def through_service(
    model_dir: Path, content: Path, style: Path, longest_side: int, budget: int, threads: int
) -> dict[str, Any]:
    """The same jobs through a real nst-server process and the client, previews every 10 iterations."""
    server: ServerProcess = start_server([model_dir], "--threads", str(threads), metrics=False)
    try:
        with StyleClient(server.address) as client:
            _job(client, content, style, max_side_px=64, max_evaluations=2)  # connection and first-call costs
            jobs = {
                optimizer: _job(
                    client,
                    content,
                    style,
                    max_side_px=longest_side,
                    max_evaluations=budget,
                    optimizer=optimizer,
                    preview_every=PREVIEW_EVERY,
                )
                for optimizer in ("lbfgs", "adam")
            }
            peak_mb = server.memory_mib("VmHWM")
            sizes = memory_by_size(client, server, content, style)
    finally:
        server.terminate()
    return {"jobs": jobs, "peak_rss_mb_after_512px_jobs": peak_mb, "memory_by_size": sizes}


def memory_by_size(client: StyleClient, server: ServerProcess, content: Path, style: Path) -> list[dict[str, Any]]:
    """Short jobs at sizes up and down: peak and current RSS after each, and seconds per evaluation.

    Growing sizes first give each size's peak (VmHWM only rises); the sizes revisited afterwards show
    whether memory keeps growing or later requests slow down once the server has seen many shapes.
    """
    rows = []
    for side in (256, 384, 512, 768, 1024, 512, 320, 640, 448, 512, 256, 512):
        job = _job(client, content, style, max_side_px=side, max_evaluations=4, optimizer="adam")
        rows.append(
            {
                "side": side,
                "rss_mb": server.memory_mib(),
                "peak_rss_mb": server.memory_mib("VmHWM"),
                "s_per_evaluation": job["optimise_s"] / job["evaluations"],
            }
        )
    return rows
