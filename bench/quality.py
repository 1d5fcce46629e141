"""`python -m bench.quality`: time to quality. How long until the service's image is as good (by the loss) as a
strong PyTorch peer's after its budget of evaluations, on losses that look like real use (bench/losses.py)?

Peers, each over the same seeded VGG19 weights, loss weights, images and thread count as the service:
- ``scipy-lbfgsb``: PyTorch autograd's gradient into ``scipy.optimize.minimize(method="L-BFGS-B")`` with bounds
  [0, 1] and ftol = gtol = 0 (Gatys et al.'s own choice; scipy's default history of 10), at full size;
- ``torch-lbfgs``: ``torch.optim.LBFGS`` (history 100, strong-Wolfe line search, no tolerances), clamped to
  [0, 1] after, as the usual PyTorch code does;
- ``c2f-scipy``: the careful user who goes coarse to fine (as crowsonkb's style-transfer does): the sizes and
  budgets of the server's coarse-to-fine schedule (``coarse_to_fine``, the default until issue 27), photo and
  painting resized to each scale
  as the service resizes them, ``scipy-lbfgsb`` at each scale from the previous scale's result resized up.

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
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import losses, service

RESULTS = Path(__file__).resolve().parent / "results"
DOC = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
PLOT = "quality.png"
PEERS = ("scipy-lbfgsb", "torch-lbfgs", "c2f-scipy")
YARDSTICK = "scipy-lbfgsb"  # the peer the targets are stated against
# Content/style pairs from ../shared/images: both photos, four paintings.
PAIRS = (
    ("tubingen.jpg", "starry_night_google.jpg"),
    ("bridge.jpg", "the_scream.jpg"),
    ("tubingen.jpg", "wave_crop.jpg"),
)
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

    def __init__(self, model_dir: Path, content: FloatArray, style: FloatArray, threads: int, weights: Any) -> None:
        from .evaluation import _torch_loss

        self.torch, self.model, manifest = _torch_loss(model_dir, "max", threads)
        self.flavour = manifest.preprocessing
        self.layers = (manifest.content_layers, manifest.style_layers)
        self.weights = (weights.content, weights.style, weights.tv)
        self.layer_weights = ((1.0,) * len(self.layers[0]), (1.0 / len(self.layers[1]),) * len(self.layers[1]))
        self.content, self.style = self.torch.from_numpy(content), self.torch.from_numpy(style)
        self.targets: Any = None
        self.compute_targets()  # untimed warm-up at this size: PyTorch's first calls, as the server's warm job
        self.loss_and_grad(self.content)

    def compute_targets(self, content: Any = None, style: Any = None) -> None:
        """Targets from the photo and painting (by default the full-size ones)."""
        from nst_export import reference

        content = self.content if content is None else content
        style = self.style if style is None else style
        self.targets = reference.Targets(
            content=reference.targets(self.model, content, self.flavour, *self.layers).content,
            gram=reference.targets(self.model, style, self.flavour, *self.layers).gram,
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


def _scipy_lbfgsb(
    reference: Reference, x0: Any, budget: int, evaluate: Callable[[Any], tuple[float, Any]]
) -> FloatArray:
    """scipy's L-BFGS-B from ``x0`` (a (1, 3, H, W) tensor) over ``evaluate``, within ``budget`` evaluations."""
    from scipy.optimize import Bounds, minimize

    torch, shape = reference.torch, tuple(x0.shape)

    def objective(flat: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        loss, grad = evaluate(torch.from_numpy(flat.astype(np.float32).reshape(shape)))
        return loss, grad.numpy().ravel().astype(np.float64)

    options = {"maxfun": budget, "maxiter": budget, "ftol": 0.0, "gtol": 0.0}
    x = x0.numpy().ravel().astype(np.float64)
    done = minimize(objective, x, jac=True, method="L-BFGS-B", bounds=Bounds(0.0, 1.0), options=options)
    final: FloatArray = done.x.astype(np.float32).reshape(shape)
    return final


def coarse_to_fine_plan(size: tuple[int, int], budget: int) -> list[tuple[tuple[int, int], int]]:
    """The server's coarse-to-fine scales for ``size`` (width, height), the default until issue 27:
    ((width, height), evaluations), coarsest first."""
    from nst_server.domain.job import Options
    from nst_server.domain.schedule import schedule

    plans = schedule(size, Options(max_evaluations=budget, coarse_to_fine=True))
    return [(plan.size, plan.evaluations) for plan in plans]


def run_peer(name: str, reference: Reference, budget: int) -> dict[str, Any]:
    """One peer from its targets to its budget; the loss at every full-size evaluation, timed from the start."""
    from nst_server.domain import images

    torch = reference.torch
    trace: list[tuple[float, float]] = []
    scales: list[dict[str, Any]] = []
    evaluations = 0
    load_before = loadavg()
    start = time.perf_counter()

    def evaluate(image: Any) -> tuple[float, Any]:
        nonlocal evaluations
        loss, grad = reference.loss_and_grad(image)
        evaluations += 1
        if image.shape == reference.content.shape:  # coarser scales' losses are of another problem
            trace.append((time.perf_counter() - start, loss))
        return loss, grad

    if name == "torch-lbfgs":
        reference.compute_targets()
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
    elif name == "scipy-lbfgsb":
        reference.compute_targets()
        final = _scipy_lbfgsb(reference, reference.content, budget, evaluate)
    else:  # c2f-scipy: as the service's pipeline resizes photo, painting and iterate between scales
        content, style = reference.content.numpy(), reference.style.numpy()
        full = (content.shape[3], content.shape[2])
        canvas = content
        for size, scale_budget in coarse_to_fine_plan(full, budget):
            scales.append({"size": list(size), "max_evaluations": scale_budget, "at_s": time.perf_counter() - start})
            before = evaluations
            ratio = size[0] / full[0]
            style_size = (max(1, round(style.shape[3] * ratio)), max(1, round(style.shape[2] * ratio)))
            scaled_content = images.resize(content, size)
            reference.compute_targets(
                torch.from_numpy(scaled_content), torch.from_numpy(images.resize(style, style_size))
            )
            canvas = _scipy_lbfgsb(reference, torch.from_numpy(images.resize(canvas, size)), scale_budget, evaluate)
            scales[-1]["evaluations"] = evaluations - before  # scipy may overrun maxfun within a line search
        reference.compute_targets()  # the full-size targets again, for the final loss below
        final = canvas
    seconds = time.perf_counter() - start
    final_loss = reference.loss_and_grad(torch.from_numpy(np.ascontiguousarray(final)))[0]
    return {
        "kind": "peer",
        "evaluations": evaluations,
        "full_size_evaluations": _equivalents(scales, full=reference.content.shape, evaluations=evaluations),
        "seconds": seconds,
        "final_loss": final_loss,
        "final_loss_8bit": reference.loss_8bit(to_8bit(final)),
        "scales": scales,
        "trace": trace,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }


def _equivalents(scales: list[dict[str, Any]], full: tuple[int, ...], evaluations: int) -> float:
    """Full-size-equivalent evaluations of a peer run: each scale's evaluations weighted by its pixel count."""
    if not scales:
        return float(evaluations)
    pixels = full[2] * full[3]
    return sum(scale["evaluations"] * scale["size"][0] * scale["size"][1] / pixels for scale in scales)


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
            options[key] = _value(value)
        runs[name] = options
    return runs


def _value(text: str) -> Any:
    """An option's value from its text: a bool (true, false), an int, a float, or else the word itself."""
    if text in ("true", "false"):
        return text == "true"
    return int(text) if text.isdigit() else float(text) if _is_float(text) else text


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def measure_size(
    model: Path,
    loss: str,
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
    """Peers and service runs on one loss, pair and size, interleaved: peer, service, peer, service, ..."""
    from nst_server.runtime.graphs import LossGraphs

    arrays = server_arrays(content, style, side)
    weights = losses.loss_weights(loss, LossGraphs(model, device="cpu", threads=threads), *arrays)
    reference = Reference(model, *arrays, threads, weights)
    schedules = _schedules(specs, budget)
    given = {"content_weight": weights.content, "style_weight": weights.style, "tv_weight": weights.tv}
    order: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    names = list(schedules)
    for index in range(max(len(peers), len(names))):
        if index < len(peers):
            peer = peers[index]
            order.append((peer, lambda peer=peer: run_peer(peer, reference, budget)))
        if index < len(names):
            name = names[index]
            options = {"max_side_px": side} | given | schedules[name]
            order.append((name, lambda options=options: run_service(client, content, style, reference, options)))
    runs: dict[str, Any] = {}
    entry = {
        "loss": loss,
        "pair": f"{content.name} + {style.name}",
        "loss_weights": [weights.content, weights.style, weights.tv],
        "side": side,
        "size": [arrays[0].shape[3], arrays[0].shape[2]],
        "budget": budget,
        "runs": runs,
    }
    for name, run in order:
        print(f"bench.quality: {loss}, {entry['pair']}, {side} px, {name}, loadavg {loadavg()}", file=sys.stderr)
        runs[name] = run()
        print(f"bench.quality:   {json.dumps({k: v for k, v in runs[name].items() if k != 'trace'})}", file=sys.stderr)
        save(entry)  # after every run, so that an interrupted run keeps what it measured
    return entry


def entry_key(entry: dict[str, Any]) -> tuple[str, str, int]:
    """What identifies a measured case: loss, pair and size (entries from before the losses: the README demo's
    pair on random weights)."""
    return entry.get("loss", "random"), entry.get("pair", f"{service.CONTENT} + {service.STYLE}"), int(entry["side"])


def machine_of(entry: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """The machine an entry's runs ran on: its own, or (entries from one sitting) the results'."""
    about: dict[str, Any] = entry.get("machine") or results["machine"]
    return about


def case_key(entry: dict[str, Any], results: dict[str, Any]) -> tuple[str, str, int, str]:
    """A case and the CPU it ran on: ``merge`` joins runs with equal keys, the reports sort by it."""
    return (*entry_key(entry), machine_of(entry, results)["cpu"])


def merge(results: dict[str, Any], other: dict[str, Any]) -> None:
    """``other``'s runs join those of the same case on the same CPU in ``results``; the rest are added as cases of
    their own, keeping their machine: ratios compare runs of one machine only."""
    for entry in other["sizes"]:
        key = case_key(entry, other)
        same = next((e for e in results["sizes"] if case_key(e, results) == key), None)
        if same is None:
            entry.setdefault("machine", other.get("machine"))
            results["sizes"].append(entry)
        else:
            same["runs"] |= entry["runs"]


def pairs_in(directory: Path, names: list[str]) -> list[tuple[Path, Path]]:
    """CONTENT:STYLE names as paths in ``directory``; the pairs whose files are not all there are left out."""
    pairs = []
    for spec in names:
        content, _, style = spec.partition(":")
        if (directory / content).exists() and (directory / style).exists():
            pairs.append((directory / content, directory / style))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["256=200"], help="SIDE=PEER_BUDGET ... (default 256=200)")
    parser.add_argument("--threads", type=int, default=2, help="for the peers and the server alike (default 2)")
    parser.add_argument(
        "--losses", nargs="+", choices=losses.LOSSES, default=["ranvgg", "balanced"],
        help="bench/losses.py (default ranvgg balanced; random is TV-dominated)",
    )  # fmt: skip
    parser.add_argument(
        "--pairs", nargs="+", default=[f"{c}:{s}" for c, s in PAIRS],
        help="CONTENT:STYLE file names in --images (default: three pairs); without them, one synthetic pair",
    )  # fmt: skip
    parser.add_argument("--images", type=Path, default=service.SHARED_IMAGES, help="default ../shared/images")
    parser.add_argument(
        "--schedule",
        action="append",
        help="service runs, NAME[:option=value,...] (default: 'default' = the server's defaults with the peers' "
        "budget, 'single-scale' = one scale from the photo (scales=1,init=content) and 'coarse-to-fine' = the "
        "server's coarse-to-fine schedule from the photo, the default until issue 27, with the same budget; 'none': "
        "peers only)",
    )
    parser.add_argument(
        "--peers", nargs="*", choices=PEERS, default=list(PEERS),
        help="which peers (default all; none: the service runs only, to --merge with peers run before)",
    )  # fmt: skip
    parser.add_argument(
        "--merge", type=Path, nargs="+", default=[],
        help="with --report-only: more quality.json files whose runs join those of the same loss, pair and size "
        "(or add the case); the merged runs are written back to OUT/quality.json",
    )  # fmt: skip
    parser.add_argument("--models", type=Path, help="where the losses' models are exported (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=DOC, help="the Markdown file to write the section into")
    parser.add_argument("--report-only", action="store_true", help="redo the plot and BENCHMARKS.md from the JSON")
    args = parser.parse_args(argv)
    if args.report_only:
        results = json.loads((args.out / "quality.json").read_text())
        for other in args.merge:  # runs made by another invocation (another loss, pair, peer or sitting)
            merge(results, json.loads(other.read_text()))
        if args.merge:  # kept, so that the committed JSON holds every run the report shows
            (args.out / "quality.json").write_text(json.dumps(results, indent=1) + "\n")
        render(results, args.out, args.doc)
        return 0
    specs = args.schedule or [
        "default:max_evaluations={budget}",
        "single-scale:scales=1,init=content,max_evaluations={budget}",
        "coarse-to-fine:coarse_to_fine=true,init=content,max_evaluations={budget}",
    ]
    specs = [spec for spec in specs if spec != "none"]  # --schedule none: peers only
    from nst_client import StyleClient
    from nst_server.testing import start_server

    from . import machine

    results: dict[str, Any] = {"machine": machine.describe(args.threads), "sizes": []}
    args.out.mkdir(parents=True, exist_ok=True)

    def save(entry: dict[str, Any]) -> None:
        kept = [e for e in results["sizes"] if entry_key(e) != entry_key(entry)]
        results["sizes"] = [*kept, entry]
        (args.out / "quality.json").write_text(json.dumps(results, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as scratch:
        pairs = pairs_in(args.images, args.pairs)
        if not pairs:
            content, style, _ = service.inputs(Path(scratch), 512)  # no ../shared: one synthetic pair
            pairs = [(content, style)]
        for loss in args.losses:
            model = losses.export(loss, args.models or Path(scratch))
            server = start_server([model], "--threads", str(args.threads))
            try:
                with StyleClient(server.address) as client:
                    for _ in client.stylize(*pairs[0], max_side_px=128, max_evaluations=2):
                        pass  # connection and first-call costs
                    for content, style in pairs:
                        for spec in args.sizes:
                            side, _, budget = spec.partition("=")
                            measure_size(
                                model, loss, content, style, int(side), int(budget), args.threads, specs, client,
                                save, tuple(args.peers),
                            )  # fmt: skip
            finally:
                server.terminate()
    render(results, args.out, args.doc)
    return 0


def _ratio(run: dict[str, Any], peer: dict[str, Any]) -> float | None:
    """The service's time to reach the peer's final loss over the peer's whole time; None when never reached."""
    reached = time_to_reach(run["trace"], peer["final_loss"])
    return None if reached is None else reached / peer["seconds"]


def table(results: dict[str, Any]) -> str:
    """Every run of every case: time to reach each peer's final loss, as a fraction of that peer's time."""
    header = "| loss | pair | size | run | evaluations (full-size equivalent) | final loss (8-bit, PyTorch) | s |"
    header += " reaches scipy-lbfgsb's final loss after s (ratio) | reaches torch-lbfgs's | reaches c2f-scipy's |"
    header += " machine (threads), load before → after |"
    lines = [header, "|" + "---|" * 11]
    for entry in sorted(results["sizes"], key=lambda e: case_key(e, results)):
        runs = entry["runs"]
        peers = {name: run for name, run in runs.items() if run["kind"] == "peer"}
        loss, pair, side = entry_key(entry)
        about = machine_of(entry, results)
        for name, run in runs.items():
            equivalents = run.get("full_size_evaluations", run["evaluations"])
            cells = []
            for peer_name in PEERS:
                peer = peers.get(peer_name)
                if peer is None:
                    cells.append("-")
                    continue
                if peer is run:
                    cells.append("(itself)")
                    continue
                ratio = _ratio(run, peer)
                cells.append("not reached" if ratio is None else f"{ratio * peer['seconds']:.0f} (**{ratio:.2f}**)")
            before, after = run["loadavg_before"][0], run["loadavg_after"][0]
            lines.append(
                f"| {losses.LABELS[loss]} | {pair} | {side} px ({entry['size'][0]}x{entry['size'][1]}) "
                f"| {name} ({run['kind']}) | {run['evaluations']} ({equivalents:.1f}) | {run['final_loss']:.5g} "
                f"({run['final_loss_8bit']:.5g}) | {run['seconds']:.0f} | {' | '.join(cells)} | "
                f"{about['cpu']} ({about['threads']}), {before:.1f} → {after:.1f} |"
            )
    return "\n".join(lines)


def summary(results: dict[str, Any]) -> str:
    """Per loss, size and machine, over the pairs: the ratio to the yardstick (median, range) and the final loss
    against the single-scale run's (median, range), for each service run."""
    cases: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for entry in results["sizes"]:
        loss, _, side = entry_key(entry)
        cases.setdefault((loss, side, machine_of(entry, results)["cpu"]), []).append(entry)
    lines = [
        f"| loss | size | machine | run | pairs | time to reach {YARDSTICK}'s final loss / its time: median (range) |"
        " final loss / single-scale's: median (range) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (loss, side, cpu), entries in sorted(cases.items()):
        names = sorted({n for e in entries for n, r in e["runs"].items() if r["kind"] == "service"})
        for name in names:
            ratios, finals = [], []
            for entry in entries:
                run, peer = entry["runs"].get(name), entry["runs"].get(YARDSTICK)
                if run is None or peer is None:
                    continue
                ratio = _ratio(run, peer)
                ratios.append(float("inf") if ratio is None else ratio)
                single = entry["runs"].get("single-scale")
                if single is not None:
                    finals.append(run["final_loss"] / single["final_loss"])
            if not ratios:
                continue
            lines.append(
                f"| {losses.LABELS[loss]} | {side} px | {cpu} | {name} | {len(ratios)} | {_spread(ratios)} | "
                f"{_spread(finals, '.4f') if finals else '-'} |"
            )
    return "\n".join(lines)


def _spread(values: list[float], form: str = ".2f") -> str:
    def show(value: float) -> str:
        return "not reached" if value == float("inf") else format(value, form)

    return f"**{show(float(np.median(values)))}** ({show(min(values))}-{show(max(values))})"


def render(results: dict[str, Any], out: Path, doc_path: Path = DOC) -> None:
    """The plot and BENCHMARKS.md's generated time-to-quality section."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = sorted(results["sizes"], key=lambda e: case_key(e, results))
    columns = min(3, len(entries))
    rows = -(-len(entries) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.5 * rows), squeeze=False)
    for axis in axes.flat[len(entries) :]:
        axis.set_visible(False)
    for axis, entry in zip(axes.flat, entries, strict=False):
        for name, run in entry["runs"].items():
            seconds, values = zip(*run["trace"], strict=True) if run["trace"] else ((), ())
            style = "--" if run["kind"] == "peer" else "-"
            axis.plot(seconds, values, style, label=f"{name} ({run['kind']})", linewidth=1.2)
        finals = [run["final_loss"] for run in entry["runs"].values()]
        axis.set_ylim(min(finals) * 0.95, min(finals) * 3)
        axis.set_yscale("log")
        axis.set_xlabel("wall-clock seconds from the call")
        axis.set_ylabel("total loss (full size)")
        loss, pair, side = entry_key(entry)
        cpu = machine_of(entry, results)["cpu"]
        axis.set_title(f"{losses.LABELS[loss]}: {pair}, {side} px, {entry['budget']} evaluations, {cpu}",
                       fontsize=9)  # fmt: skip
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / PLOT, dpi=90)
    machines = {json.dumps(machine_of(entry, results), sort_keys=True) for entry in entries}
    about = "; ".join(
        f"{m['cpu']}, {m['logical_cpus']} logical CPUs, {m['threads']} thread(s) per run"
        for m in map(json.loads, sorted(machines))
    )
    text = (
        f"- machine: {about}\n\n**Over the pairs** (ratio: the service's time to reach {YARDSTICK}'s final loss "
        f"over that peer's whole time; final loss against the single-scale service run's):\n\n{summary(results)}\n\n"
        f"**Every run** (s: seconds from the call, or from the targets for a peer):\n\n{table(results)}\n"
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
