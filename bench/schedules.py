"""`python -m bench.schedules`: the experiments behind the server's default schedule, in-process for speed.

Each variant runs the server's own pipeline (``nst_server.domain.pipeline.stylize``) on one content/style pair (the
README's demo images by default) and one of bench/losses.py's losses, with some of its schedule constants or options
changed, and reports the full-size-equivalent evaluations and seconds
until its final-scale loss reaches a target: scipy's L-BFGS-B (over the same onnxruntime evaluator, history 10,
bounds [0, 1], ftol = gtol = 0) after ``--target-evaluations`` evaluations. Evaluations are the machine-
independent figure; seconds include the coarse scales' preparation and suffer from whatever else runs.
The headline figures come from `python -m bench.quality`, through gRPC; this module only ranks ideas.

    python -m bench.schedules --loss ranvgg --side 256 --target-evaluations 200 --budget 200 VARIANT ...

A VARIANT is NAME[:key=value,...] and starts from the server's defaults: since issue 27 one scale from the photo
in the painting's colours (``init=matched``); the rows measured before that ran on the coarse-to-fine default from
the photo, which ``coarse_to_fine=1,init=content`` reproduces. Keys: the constants of the coarse-to-fine
schedule (ratio, coarsest, growth; with coarse_to_fine=1), the options (scales, coarse_to_fine,
coarse_evaluations, lbfgs_history, optimizer, learning_rate, min_improvement, init: content, matched, gray or
noise), carry=0 (no L-BFGS state across scales), style=full (coarser scales' style targets from the whole
painting, not one resized to the scale), upsample=bilinear (the iterate carried up a scale by
bilinear, not Lanczos, resampling), upsample=detail (carried up with the photo's detail that the coarser scale could
not hold: the iterate resized up plus the photo at the new size less the photo resized down and up again, a
Laplacian pyramid's finer band), coarse_optimizer=adam (Adam at the coarser scales, the variant's optimiser at the
last), coarse_min_improvement=X (min_improvement at the coarser scales only), pyramid=LEVELS:BASE (L-BFGS's
H0 = gamma M, M the Laplacian-pyramid preconditioner ``nst_server.domain.optimise.pyramid_preconditioner``) and
pairs=rescaled (L-BFGS's (s, y) pairs, not only its gamma, carried up a scale: ``rescaled_pairs``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from . import losses, service
from . import machine as machine_info
from .quality import loadavg


def _job(content: Path, style: Path, side: int, options: Any) -> Any:
    from nst_server.domain import images
    from nst_server.domain.job import Job, Style

    photo = images.decode(content.read_bytes(), "content", 1 << 30)
    size = images.size_for_longest_side(*photo.size, side)
    painting = images.decode(style.read_bytes(), "style", 1 << 30)
    style_array = images.to_array(painting, images.size_for_longest_side(*painting.size, side))
    return Job("bench", "model", size, images.to_array(photo, size), (Style(style_array),), options)


def target(graphs: Any, job: Any, evaluations: int, cache: Path, case: str) -> dict[str, Any]:
    """scipy's L-BFGS-B over the server's evaluator at the job's size: its loss after ``evaluations``."""
    key = f"{case}-{job.size[0]}x{job.size[1]}-{evaluations}"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if key in known:
        return known[key]  # type: ignore[no-any-return]
    from nst_server.domain import optimise
    from nst_server.domain.targets import job_targets

    start = time.perf_counter()
    evaluate = graphs.evaluator(
        job.content.shape[2:], job_targets(graphs, job.content, [job.styles[0].image], None),
        job.options.loss_weights or graphs.manifest.default_loss_weights,
    )  # fmt: skip
    outcome = service.scipy_lbfgsb(evaluate, optimise.Run(job.content.copy(), evaluations), 10)
    known[key] = {"loss": outcome.losses.total, "seconds": time.perf_counter() - start, "loadavg": loadavg()}
    cache.write_text(json.dumps(known, indent=1))
    return known[key]  # type: ignore[no-any-return]


_CONSTANTS = {"ratio": "AUTO_RATIO", "coarsest": "AUTO_COARSEST_SIDE_PX", "growth": "AUTO_GROWTH"}


def _upsampled(how: str, job: Any) -> Any:
    """pipeline.canvas_for_scale for the ``upsample`` lever."""
    import numpy as np
    from nst_server.domain import images
    from PIL import Image

    def detail(canvas: Any, size: tuple[int, int]) -> Any:
        up = images.resize(canvas, size)
        if job.content is None or up is canvas:
            return up
        coarse = (canvas.shape[3], canvas.shape[2])
        photo = images.resize(job.content, size)
        band = photo - images.resize(images.resize(job.content, coarse), size)  # what the coarser scale lost
        return np.clip(up + band, 0.0, 1.0).astype(np.float32)

    if how == "detail":
        return detail
    if how == "bilinear":
        return lambda canvas, size: images.resize(canvas, size, Image.Resampling.BILINEAR)
    raise ValueError(f"upsample={how}: bilinear or detail")


def _resized(vector: Any, shape: tuple[int, ...], size: tuple[int, int]) -> Any:
    """A flat (3 * H * W) float32 vector, as an image of ``shape``, resized (bicubic, as measured) to ``size``
    without clipping: steps and gradient changes are not pixels in [0, 1]."""
    from nst_server.domain import images
    from PIL import Image

    return images.resize(vector.reshape(shape), size, Image.Resampling.BICUBIC, clip=False).ravel()


def rescaled_pairs(s: Any, y: Any, shape: tuple[int, ...], size: tuple[int, int]) -> tuple[Any, Any]:
    """One L-BFGS pair of a coarser scale as the next scale's: s resized, y resized and divided by the pixel ratio.

    If the finer loss near the resized iterate is the coarser one seen through the resize U (f_fine(U x) ~ f(x)),
    its gradient is ~ U g / r with r the ratio of pixel counts (U's transpose sums about r fine pixels per coarse
    one), so y goes over as U y / r; then (U s).(U y / r) ~ s.y: each pair keeps its curvature along its step.
    """
    ratio = size[0] * size[1] / (shape[2] * shape[3])
    return _resized(s, shape, size), _resized(y, shape, size) / ratio


def carried_pairs(original: Any, sizes: list[tuple[int, int]]) -> Any:
    """optimise._Pairs starting each scale after the first with the previous scale's pairs, ``rescaled_pairs``.

    ``sizes`` lists the (width, height) of every scale begun so far (``pipeline.canvas_for_scale`` appends to it).
    """
    previous: list[Any] = []

    class Carried(original):  # type: ignore[misc, valid-type]
        def __init__(self, size: int, n: int, precondition: Any = None) -> None:
            super().__init__(size, n, precondition)
            if previous and len(sizes) > 1 and sizes[-1] != sizes[-2]:
                old = previous[-1]
                shape = (1, 3, sizes[-2][1], sizes[-2][0])
                for row in old._order[-size:]:  # oldest first, as the two-loop recursion expects
                    new = self.next_row
                    self.s[new], self.y[new] = rescaled_pairs(old.s[row], old.y[row], shape, sizes[-1])
                    self.keep(new)
            previous[:] = [self]

    return Carried


def _per_scale(original: Any, coarse: dict[str, Any]) -> Any:
    """pipeline._optimise with ``coarse`` option overrides at every scale but the last."""

    def run(job: Any, optimiser: Any, canvas: Any, *rest: Any) -> Any:
        if (canvas.shape[3], canvas.shape[2]) != job.size:
            job = dataclasses.replace(job, options=dataclasses.replace(job.options, **coarse))
        return original(job, optimiser, canvas, *rest)

    return run


def run_variant(graphs: Any, job: Any, spec: str, goal: float) -> dict[str, Any]:
    """One in-process job under a variant; when its final-scale loss first reaches ``goal``."""
    from nst.events import Optimizer, Progress, ScaleStarted
    from nst_server.domain import optimise, pipeline, schedule
    from nst_server.domain.errors import Cancelled

    name, _, rest = spec.partition(":")
    saved_style, saved_canvas, saved_optimise = pipeline.style_for_scale, pipeline.canvas_for_scale, pipeline._optimise
    saved = {attr: getattr(schedule, attr) for attr in _CONSTANTS.values()}
    saved_carry, saved_lbfgs, saved_pairs = pipeline.carry_h0_gamma, optimise.lbfgs, optimise._Pairs
    saved_placement = graphs.placements["lbfgs"]
    options = job.options
    coarse: dict[str, Any] = {}
    try:
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            if key in _CONSTANTS:
                setattr(schedule, _CONSTANTS[key], float(value))
            elif key == "carry":
                pipeline.carry_h0_gamma = lambda *_: None  # type: ignore[assignment]
            elif key == "optimizer":
                options = dataclasses.replace(options, optimizer=Optimizer(value))
            elif key == "style" and value == "full":  # coarser scales' style targets from the whole painting
                pipeline.style_for_scale = lambda style, _: style  # type: ignore[assignment]
            elif key == "upsample":
                pipeline.canvas_for_scale = _upsampled(value, job)
            elif key == "coarse_optimizer":
                coarse["optimizer"] = Optimizer(value)
            elif key == "pyramid":
                levels, _, base = value.partition(":")

                def preconditioned(
                    objective: Any, run: Any, *rest: Any, levels: int = int(levels), base: float = float(base or 4)
                ) -> Any:
                    m = optimise.pyramid_preconditioner(run.x0.shape, levels, base)
                    return saved_lbfgs(objective, run, *rest, precondition=m)

                optimise.lbfgs = preconditioned
                graphs.placements["lbfgs"] = "host"  # the step graphs (CPU's default placement) have no preconditioner
            elif key == "pairs" and value == "rescaled":
                sizes: list[tuple[int, int]] = []

                def recorded(
                    canvas: Any, size: tuple[int, int], sizes: list[tuple[int, int]] = sizes,
                    inner: Any = pipeline.canvas_for_scale,
                ) -> Any:  # fmt: skip
                    sizes.append(size)
                    return inner(canvas, size)

                pipeline.canvas_for_scale = recorded
                optimise._Pairs = carried_pairs(saved_pairs, sizes)  # type: ignore[misc]
                graphs.placements["lbfgs"] = "host"  # the step graphs (CPU's default placement) keep their own pairs
            elif key == "coarse_min_improvement":
                coarse["min_improvement"] = float(value)
            else:
                field = type(getattr(options, key))
                parsed = value in ("1", "true") if field is bool else field(value)
                options = dataclasses.replace(options, **{key: parsed})
        if coarse:
            pipeline._optimise = _per_scale(saved_optimise, coarse)
        state: dict[str, Any] = {"fraction": 1.0, "evaluations": 0, "equivalent": 0.0, "last": False, "reached": None}
        plans = schedule.job_schedule(dataclasses.replace(job, options=options))
        start = time.perf_counter()

        def emit(event: Any) -> None:
            if isinstance(event, ScaleStarted):
                state["fraction"] = event.width * event.height / (job.size[0] * job.size[1])
                state["last"] = event.scale == event.scales
            elif isinstance(event, Progress):
                state["equivalent"] += (event.evaluations - state["evaluations"]) * state["fraction"]
                state["evaluations"] = event.evaluations
                if state["last"] and state["reached"] is None and event.losses.total <= goal:
                    state["reached"] = (state["equivalent"], time.perf_counter() - start)

        load = loadavg()
        try:  # a variant that reaches the goal stops there: only the time to reach it is wanted
            result = pipeline.stylize(
                dataclasses.replace(job, options=options), graphs, emit, lambda: state["reached"] is not None
            )
        except Cancelled:
            result = None
        seconds = time.perf_counter() - start
    finally:
        for attr, value in saved.items():
            setattr(schedule, attr, value)
        pipeline.carry_h0_gamma, optimise.lbfgs = saved_carry, saved_lbfgs  # type: ignore[assignment]
        optimise._Pairs = saved_pairs  # type: ignore[misc]
        graphs.placements["lbfgs"] = saved_placement
        pipeline.style_for_scale = saved_style  # type: ignore[assignment]
        pipeline.canvas_for_scale, pipeline._optimise = saved_canvas, saved_optimise  # type: ignore[assignment]
    reached = state["reached"]
    return {
        "variant": spec,
        "name": name,
        "plans": [[*plan.size, plan.evaluations] for plan in plans],  # width, height, evaluations
        "final_loss": None if result is None else result.losses.total,
        "evaluations": state["evaluations"],
        "full_size_evaluations": round(state["equivalent"], 1),
        "stop_reason": "reached the target" if result is None else result.stop_reason.value,
        "seconds": round(seconds, 1),
        "reached_equivalent": None if reached is None else round(reached[0], 1),
        "reached_s": None if reached is None else round(reached[1], 1),
        "loadavg": load,
    }


LEVERS_BEGIN, LEVERS_END = "<!-- levers -->", "<!-- /levers -->"


def _evaluations(plans: list[list[int]]) -> str:
    return ", ".join(f"{width}x{height} ({evaluations})" for width, height, evaluations in plans)


def levers_table(rows: list[dict[str, Any]]) -> str:
    """BENCHMARKS.md's lever table from ``--out`` JSON lines, in their order."""
    lines = [
        "| loss | pair, size | variant | scales (evaluations planned) | full-size equivalents to reach scipy's "
        "loss | final loss if not reached (target) | s | machine (threads), load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        reached = row["reached_equivalent"]
        final = "-" if reached is not None else f"{row['final_loss']:.4g} ({row['target']['loss']:.4g})"
        lines.append(
            f"| {row['loss']} | {row['pair']}, {row['side']} px | `{row['variant']}` | {_evaluations(row['plans'])} "
            f"| {'**' + str(reached) + '**' if reached is not None else 'not reached'} | {final} | {row['seconds']} "
            f"| {row['machine']}, {row['loadavg'][0]} |"
        )
    return "\n".join(lines)


def render_levers(jsonl: list[Path], doc: Path) -> None:
    """Rewrite the lever table between LEVERS_BEGIN and LEVERS_END in ``doc`` from the JSON lines."""
    rows = [json.loads(line) for path in jsonl for line in path.read_text().splitlines() if line.strip()]
    text = doc.read_text()
    head, _, rest = text.partition(LEVERS_BEGIN)
    _, _, tail = rest.partition(LEVERS_END)
    doc.write_text(f"{head}{LEVERS_BEGIN}\n{levers_table(rows)}\n{LEVERS_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.schedules", description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*")
    parser.add_argument("--loss", choices=losses.LOSSES, default="ranvgg", help="bench/losses.py (default ranvgg)")
    parser.add_argument("--model", type=Path, help="the loss's model (default: exported into --models)")
    parser.add_argument("--models", type=Path, default=Path("/tmp/nst-bench-models"), help="where to export it")
    parser.add_argument("--content", type=Path, help="default: the README demo's photo (or a synthetic one)")
    parser.add_argument("--style", type=Path, help="default: the README demo's painting (or a synthetic one)")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--target-evaluations", type=int, default=200)
    parser.add_argument("--budget", type=int, default=200, help="max_evaluations of every variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("bench/results/schedule_targets.json"))
    parser.add_argument("--out", type=Path, help="append each variant's JSON line here")
    parser.add_argument(
        "--render", type=Path, nargs="+", help="only rewrite BENCHMARKS.md's lever table from these --out files"
    )
    args = parser.parse_args(argv)
    if args.render:
        render_levers(args.render, Path(__file__).resolve().parents[1] / "BENCHMARKS.md")
        return 0
    from nst_server.domain.job import Options
    from nst_server.runtime.graphs import LossGraphs

    model = args.model or losses.export(args.loss, args.models)
    graphs = LossGraphs(model, device="cpu", threads=args.threads)
    content, style, _ = service.inputs(Path("/tmp"), args.side)
    content, style = args.content or content, args.style or style
    job = _job(content, style, args.side, Options(max_side_px=args.side, max_evaluations=args.budget))
    weights = losses.loss_weights(args.loss, graphs, job.content, job.styles[0].image)
    job = dataclasses.replace(job, options=dataclasses.replace(job.options, loss_weights=weights))
    case = f"{args.loss}-{content.name}-{style.name}"
    goal = target(graphs, job, args.target_evaluations, args.cache, case)
    cpu = machine_info.describe(args.threads)["cpu"]
    machine = f"{cpu} ({args.threads})"
    about = {"loss": args.loss, "pair": f"{content.name} + {style.name}", "loss_weights": dataclasses.astuple(weights)}
    print(json.dumps({"target": goal, "side": args.side, "target_evaluations": args.target_evaluations} | about))
    for spec in args.variants:
        row = run_variant(graphs, job, spec, goal["loss"])
        print(json.dumps(row), flush=True)
        if args.out:
            with args.out.open("a") as out:
                out.write(json.dumps(row | {"side": args.side, "target": goal, "machine": machine} | about) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
