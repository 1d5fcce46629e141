"""`python -m bench.quality`: time to quality. How long until the service's image is as good (by the loss) as a
strong PyTorch peer's after its budget of evaluations?

Peers, each over the same seeded VGG19 weights, loss weights, images and thread count as the service:
- ``torch-lbfgs``: ``torch.optim.LBFGS`` (history 100, strong-Wolfe line search, no tolerances), clamped to
  [0, 1] after, as the usual PyTorch code does;
- ``scipy-lbfgsb``: PyTorch autograd's gradient into ``scipy.optimize.minimize(method="L-BFGS-B")`` with bounds
  [0, 1] and ftol = gtol = 0 (Gatys et al.'s own choice; scipy's default history of 10).

The service runs as a real ``nst-server`` process, through the client; every event is timed from the call.
Peers are timed from their targets' computation to each evaluation. Runs of peers and of the service are
interleaved and /proc/loadavg is recorded beside each, because the machine may be shared.
The output: bench/results/quality.json, the plot bench/results/quality.png and BENCHMARKS.md's time-to-quality
section (``--report-only`` redoes those two from the JSON).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import service

RESULTS = Path(__file__).resolve().parent / "results"
DOC = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
PLOT = "quality.png"
PEERS = ("scipy-lbfgsb", "torch-lbfgs")
TORCH_HISTORY = 100
FloatArray = npt.NDArray[np.float32]


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (what else was running shows up in every time)."""
    return [float(value) for value in Path("/proc/loadavg").read_text().split()[:3]]


def server_arrays(content: Path, style: Path, side: int) -> tuple[FloatArray, FloatArray]:
    """Content and style exactly as the server decodes and resizes them for ``max_side_px = side``."""
    from nst_server.domain import images

    photo = images.decode(content.read_bytes(), "content", 1 << 30)
    size = images.size_for_longest_side(*photo.size, side)
    painting = images.decode(style.read_bytes(), "style", 1 << 30)
    return images.to_array(photo, size), images.to_array(painting, images.size_for_longest_side(*painting.size, side))


class Reference:
    """The export's PyTorch reference loss (``nst_export.reference``) over the exported model's seeded weights."""

    def __init__(self, model_dir: Path, content: FloatArray, style: FloatArray, threads: int) -> None:
        from .evaluation import _torch_loss

        self.torch, self.model, manifest = _torch_loss(model_dir, "max", threads)
        self.flavour = manifest.preprocessing
        self.layers = (manifest.content_layers, manifest.style_layers)
        weights = manifest.default_loss_weights
        self.weights = (weights.content, weights.style, weights.tv)
        self.layer_weights = ((1.0,) * len(self.layers[0]), (1.0 / len(self.layers[1]),) * len(self.layers[1]))
        self.content, self.style = self.torch.from_numpy(content), self.torch.from_numpy(style)
        self.targets: Any = None
        self.compute_targets()  # untimed warm-up at this size: PyTorch's first calls, as the server's warm job
        self.loss_and_grad(self.content)

    def compute_targets(self) -> None:
        from nst_export import reference

        self.targets = reference.Targets(
            content=reference.targets(self.model, self.content, self.flavour, *self.layers).content,
            gram=reference.targets(self.model, self.style, self.flavour, *self.layers).gram,
        )

    def loss_and_grad(self, image: Any) -> tuple[float, Any]:
        from nst_export import reference

        terms = reference.gatys_loss(self.model, image, self.flavour, self.targets, self.weights, *self.layer_weights)
        return float(terms.total), terms.grad

    def loss_8bit(self, pixels: npt.NDArray[np.uint8]) -> float:
        """The loss of an 8-bit HWC RGB image, as the caller gets it."""
        array = (pixels.astype(np.float32) / 255).transpose(2, 0, 1)[None].copy()
        return self.loss_and_grad(self.torch.from_numpy(array))[0]


def to_8bit(x: FloatArray) -> npt.NDArray[np.uint8]:
    """Round as the server's encoder does."""
    return np.clip(x[0].transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def run_peer(name: str, reference: Reference, budget: int) -> dict[str, Any]:
    """One peer from its targets to its budget; the loss at every evaluation, timed from the start."""
    torch = reference.torch
    trace: list[tuple[float, float]] = []
    load_before = loadavg()
    start = time.perf_counter()
    reference.compute_targets()

    def evaluate(image: Any) -> tuple[float, Any]:
        loss, grad = reference.loss_and_grad(image)
        trace.append((time.perf_counter() - start, loss))
        return loss, grad

    if name == "torch-lbfgs":
        x = reference.content.clone().requires_grad_(True)
        optimiser = torch.optim.LBFGS(
            [x], lr=1, max_iter=budget, max_eval=budget, history_size=TORCH_HISTORY, line_search_fn="strong_wolfe",
            tolerance_grad=0.0, tolerance_change=0.0,
        )  # fmt: skip

        def closure() -> Any:
            loss, grad = evaluate(x.detach())
            x.grad = grad
            return torch.tensor(loss)

        optimiser.step(closure)
        with torch.no_grad():
            x.clamp_(0.0, 1.0)  # the usual PyTorch code: unconstrained, clamped at the end
        final = x.detach().numpy()
    else:
        from scipy.optimize import Bounds, minimize

        shape = tuple(reference.content.shape)

        def objective(flat: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
            loss, grad = evaluate(torch.from_numpy(flat.astype(np.float32).reshape(shape)))
            return loss, grad.numpy().ravel().astype(np.float64)

        options = {"maxfun": budget, "maxiter": budget, "ftol": 0.0, "gtol": 0.0}
        x0 = reference.content.numpy().ravel().astype(np.float64)
        done = minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=Bounds(0.0, 1.0), options=options)
        final = done.x.astype(np.float32).reshape(shape)
    seconds = time.perf_counter() - start
    final_loss = reference.loss_and_grad(torch.from_numpy(np.ascontiguousarray(final)))[0]
    return {
        "kind": "peer",
        "evaluations": len(trace),
        "seconds": seconds,
        "final_loss": final_loss,
        "final_loss_8bit": reference.loss_8bit(to_8bit(final)),
        "trace": trace,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }


def run_service(
    client: Any, content: Path, style: Path, reference: Reference, options: dict[str, Any]
) -> dict[str, Any]:
    """One job through the client: every final-scale progress event's loss, timed from the call."""
    from nst_client import Progress, Result, ScaleStarted, Started
    from PIL import Image

    trace: list[tuple[float, float]] = []
    scales: list[dict[str, Any]] = []
    last_scale, job_scales = True, 1
    load_before = loadavg()
    start = time.perf_counter()
    for event in client.stylize(content, style, timeout_s=7200, **options):
        now = time.perf_counter() - start
        if isinstance(event, Started):
            job_scales = event.scales
        elif isinstance(event, ScaleStarted):
            last_scale = event.scale == job_scales
            scales.append({"size": [event.width, event.height], "max_evaluations": event.max_evaluations, "at_s": now})
        elif isinstance(event, Progress) and last_scale:  # coarser scales' losses are of another problem
            trace.append((now, event.losses.total))
        elif isinstance(event, Result):
            pixels = np.asarray(Image.open(io.BytesIO(event.image)).convert("RGB"))
            return {
                "kind": "service",
                "options": options,
                "seconds": now,
                "final_loss": event.losses.total,
                "final_loss_8bit": reference.loss_8bit(pixels),
                "evaluations": event.evaluations,
                "full_size_evaluations": event.full_size_evaluations,
                "stop_reason": event.stop_reason,
                "scales": scales,
                "trace": trace,
                "loadavg_before": load_before,
                "loadavg_after": loadavg(),
            }
    raise RuntimeError("the stream ended without a result")


def time_to_reach(trace: list[tuple[float, float]], loss: float) -> float | None:
    """Seconds until the first event at or below ``loss``; None when it never gets there."""
    return next((seconds for seconds, value in trace if value <= loss), None)


def _schedules(specs: list[str], budget: int) -> dict[str, dict[str, Any]]:
    """NAME or NAME:key=value,key=value; values are ints, floats or words; {budget} stands for the peers' budget."""
    runs = {}
    for spec in specs:
        name, _, rest = spec.partition(":")
        options: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            value = value.replace("{budget}", str(budget))
            options[key] = int(value) if value.isdigit() else float(value) if _is_float(value) else value
        runs[name] = options
    return runs


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def measure_size(
    model: Path,
    content: Path,
    style: Path,
    side: int,
    budget: int,
    threads: int,
    specs: list[str],
    client: Any,
    save: Callable[[dict[str, Any]], None],
    peers: tuple[str, ...] = PEERS,
) -> dict[str, Any]:
    """Peers and service runs at one size, interleaved: peer, service, peer, service, then any other schedules."""
    arrays = server_arrays(content, style, side)
    reference = Reference(model, *arrays, threads)
    schedules = _schedules(specs, budget)
    order: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    names = list(schedules)
    for index in range(max(len(peers), len(names))):
        if index < len(peers):
            peer = peers[index]
            order.append((peer, lambda peer=peer: run_peer(peer, reference, budget)))
        if index < len(names):
            name = names[index]
            options = {"max_side_px": side} | schedules[name]
            order.append((name, lambda options=options: run_service(client, content, style, reference, options)))
    runs: dict[str, Any] = {}
    entry = {"side": side, "size": [arrays[0].shape[3], arrays[0].shape[2]], "budget": budget, "runs": runs}
    for name, run in order:
        print(f"bench.quality: {side} px, {name}, loadavg {loadavg()}", file=sys.stderr)
        runs[name] = run()
        print(f"bench.quality:   {json.dumps({k: v for k, v in runs[name].items() if k != 'trace'})}", file=sys.stderr)
        save(entry)  # after every run, so that an interrupted run keeps what it measured
    return entry


def _export(directory: Path) -> Path:
    out = directory / "random-max"
    subprocess.run(
        ["nst-export", "--weights", "random", "--seed", "0", "--pooling", "max", "--out", str(out)],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["256=200", "512=500"], help="SIDE=PEER_BUDGET ...")
    parser.add_argument("--threads", type=int, default=2, help="for the peers and the server alike (default 2)")
    parser.add_argument(
        "--schedule",
        action="append",
        help="service runs, NAME[:option=value,...] (default: 'default' = the server's defaults with the peers' "
        "budget, and 'single-scale' = scales=1 with the same budget)",
    )
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS), help="which peers (default both)")
    parser.add_argument(
        "--merge", type=Path, nargs="+", default=[],
        help="with --report-only: more quality.json files whose runs join those of the same size (or add a size); "
        "the merged runs are written back to OUT/quality.json",
    )  # fmt: skip
    parser.add_argument("--model", type=Path, help="an exported model (default: nst-export --weights random --seed 0)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=DOC, help="the Markdown file to write the section into")
    parser.add_argument("--report-only", action="store_true", help="redo the plot and BENCHMARKS.md from the JSON")
    args = parser.parse_args(argv)
    if args.report_only:
        results = json.loads((args.out / "quality.json").read_text())
        for other in args.merge:  # runs made at the same time by another invocation (e.g. one peer each)
            for entry in json.loads(other.read_text())["sizes"]:
                same = next((e for e in results["sizes"] if e["side"] == entry["side"]), None)
                if same is None:  # a size only the other invocation measured
                    results["sizes"] = sorted([*results["sizes"], entry], key=lambda e: int(e["side"]))
                else:
                    same["runs"] |= entry["runs"]
        if args.merge:  # kept, so that the committed JSON holds every run the report shows
            (args.out / "quality.json").write_text(json.dumps(results, indent=1) + "\n")
        render(results, args.out, args.doc)
        return 0
    specs = args.schedule or ["default:max_evaluations={budget}", "single-scale:scales=1,max_evaluations={budget}"]
    from nst_client import StyleClient
    from nst_server.testing import start_server

    from . import machine

    results: dict[str, Any] = {"machine": machine.describe(args.threads), "sizes": []}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or _export(Path(scratch))
        content, style, source = service.inputs(Path(scratch), 512)
        results["images"] = source
        server = start_server([model], "--threads", str(args.threads))
        try:
            with StyleClient(server.address) as client:
                for _ in client.stylize(content, style, max_side_px=64, max_evaluations=2):
                    pass  # connection and first-call costs
                for spec in args.sizes:
                    side, _, budget = spec.partition("=")
                    done = len(results["sizes"])

                    def save(entry: dict[str, Any], done: int = done) -> None:
                        results["sizes"] = [*results["sizes"][:done], entry]
                        (args.out / "quality.json").write_text(json.dumps(results, indent=1) + "\n")

                    measure_size(
                        model, content, style, int(side), int(budget), args.threads, specs, client, save,
                        tuple(args.peers),
                    )  # fmt: skip
        finally:
            server.terminate()
    render(results, args.out, args.doc)
    return 0


def table(results: dict[str, Any]) -> str:
    """Time to reach each peer's final loss, as a fraction of that peer's time, for every service run."""
    header = "| size | service run | evaluations (full-size equivalent) | stopped |"
    header += " service's final loss (8-bit, PyTorch) | peer | peer's final loss (8-bit) | peer's s |"
    header += " service's s to reach it | ratio |"
    lines = [header, "|" + "---|" * 10]
    for entry in results["sizes"]:
        runs = entry["runs"]
        peers = {name: run for name, run in runs.items() if run["kind"] == "peer"}
        for name, run in runs.items():
            if run["kind"] != "service":
                continue
            for peer_name, peer in peers.items():
                reached = time_to_reach(run["trace"], peer["final_loss"])
                ratio = f"**{reached / peer['seconds']:.2f}**" if reached is not None else "not reached"
                lines.append(
                    f"| {entry['side']} px ({entry['size'][0]}x{entry['size'][1]}) | {name} | "
                    f"{run['evaluations']} ({run['full_size_evaluations']}) | {run['stop_reason']} | "
                    f"{run['final_loss']:.5g} ({run['final_loss_8bit']:.5g}) | {peer_name}, {peer['evaluations']} "
                    f"evaluations | {peer['final_loss']:.5g} ({peer['final_loss_8bit']:.5g}) | {peer['seconds']:.0f} | "
                    f"{'-' if reached is None else f'{reached:.0f}'} | {ratio} |"
                )
    return "\n".join(lines)


def loads(results: dict[str, Any]) -> str:
    rows = []
    for entry in results["sizes"]:
        for name, run in entry["runs"].items():
            before, after = run["loadavg_before"], run["loadavg_after"]
            rows.append(f"{entry['side']} px {name}: {before[0]:.1f} → {after[0]:.1f}")
    return "1-minute load average before → after each run (2 CPUs): " + "; ".join(rows) + "."


def render(results: dict[str, Any], out: Path, doc_path: Path = DOC) -> None:
    """The plot and BENCHMARKS.md's generated time-to-quality section."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results["sizes"]
    figure, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for axis, entry in zip(axes[0], sizes, strict=True):
        for name, run in entry["runs"].items():
            seconds, values = zip(*run["trace"], strict=True) if run["trace"] else ((), ())
            style = "--" if run["kind"] == "peer" else "-"
            axis.plot(seconds, values, style, label=f"{name} ({run['kind']})", linewidth=1.2)
        peer_best = min(run["final_loss"] for run in entry["runs"].values() if run["kind"] == "peer")
        finals = [run["final_loss"] for run in entry["runs"].values()]
        axis.set_ylim(min(finals) * 0.9, peer_best * 6)
        axis.set_yscale("log")
        axis.set_xlabel("wall-clock seconds from the call")
        axis.set_ylabel("total loss (final scale)")
        axis.set_title(f"{entry['side']} px, peers {entry['budget']} evaluations")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / PLOT, dpi=110)
    about = results["machine"]
    text = (
        f"- machine: {about['cpu']}, {about['logical_cpus']} logical CPUs, {about['threads']} threads for every run; "
        f"images: {results['images']}\n\n{table(results)}\n\n{loads(results)}\n"
    )
    doc = doc_path.read_text() if doc_path.exists() else ""
    start, end = "<!-- bench:quality -->", "<!-- /bench:quality -->"
    if start in doc:
        before, rest = doc.split(start, 1)
        doc = before + start + "\n" + text + end + rest.split(end, 1)[1]
    else:
        doc += f"\n## Time to quality (*generated*)\n\n{start}\n{text}{end}\n"
    doc_path.write_text(doc)
    print(f"bench.quality: wrote {out / PLOT} and {doc_path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
