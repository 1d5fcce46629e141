"""bench/results/*.json to BENCHMARKS.md's generated sections and the plot; `python -m bench.report` redoes
them from the last results without measuring again."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
PLOT = "seconds_per_evaluation.png"


def _load(results: Path, name: str) -> Any:
    return json.loads((results / f"{name}.json").read_text())


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _target(name: str, measured: str, met: bool) -> list[str]:
    return [name, measured, "yes" if met else "**no**"]


def targets_section(about: dict[str, Any], rows: list[dict[str, Any]], service: dict[str, Any]) -> str:
    """Issue 6's targets against this run's figures, each with whether it is met."""
    size = service["in_process"]["size"][0]
    cpu = {
        (r["method"], r["pooling"]): r for r in rows if r["device"] == "cpu" and r["size"] == size and "error" not in r
    }
    peak = max(about["matmul_gflops_per_s"].values())
    table = []
    for pooling in ("max", "avg"):
        where = f"{pooling} pooling, {size} px"
        ort, eager, compiled = (cpu.get((m, pooling)) for m in ("onnxruntime", "torch-eager", "torch-compile"))
        if ort is None:
            continue
        if eager:
            ratio = eager["median_s"] / ort["median_s"]
            table.append(_target(f"onnxruntime at least 1.5x faster than PyTorch eager ({where})", f"{ratio:.2f}x",
                                 ratio >= 1.5))  # fmt: skip
        if compiled:
            ratio = compiled["median_s"] / ort["median_s"]
            table.append(_target(f"onnxruntime faster than torch.compile ({where})", f"{ratio:.2f}x", ratio > 1))
        share = ort["gflops_per_s"] / peak
        achieved = f"{ort['gflops_per_s']:.0f} of {peak:.0f} GFLOP/s, {share:.0%}"
        table.append(_target(f"at least 85% of the matrix-multiply peak ({where})", achieved, share >= 0.85))
    jobs, local = service["service"]["jobs"], service["in_process"]["optimisers"]
    for optimiser, bar in (("lbfgs", 0.05), ("adam", 0.01)):
        job = jobs[optimiser]
        host = (job["optimise_s"] - job["evaluate_s"]) / job["evaluate_s"]
        name = f"service host time at most {bar:.0%} of the evaluation time ({optimiser}, through gRPC, {size} px)"
        table.append(_target(name, f"{host:.2%}", host <= bar))
    ours, scipy = local["lbfgs"]["final_loss"], local["scipy-lbfgsb"]["final_loss"]
    name = f"L-BFGS's final loss no worse than scipy's L-BFGS-B at {service['evaluations']} evaluations"
    table.append(_target(name, f"{ours:.6g} against {scipy:.6g}", ours <= scipy))
    peak_mb = service["service"]["peak_rss_mb_after_512px_jobs"]
    table.append(
        _target(f"server peak RSS running {size} px jobs at most 1.2 GB", f"{peak_mb:.0f} MB", peak_mb <= 1200)
    )
    sizes = service["service"]["memory_by_size"]
    visits = [r for r in sizes if r["side"] == size]
    first, last = visits[0], visits[-1]
    grown, slower = last["rss_mb"] - first["rss_mb"], last["s_per_evaluation"] / first["s_per_evaluation"] - 1
    name = (
        f"sizes changing between requests neither leak (under 100 MB) nor slow down (under 10%): the {size} px job "
        f"after {len(sizes)} jobs of other sizes against the first"
    )
    table.append(_target(name, f"{grown:+.0f} MB, {slower:+.1%}", grown < 100 and slower < 0.1))
    return _table(["target", "measured", "met"], table)


def machine_section(about: dict[str, Any]) -> str:
    peaks = about["matmul_gflops_per_s"]
    libraries = ", ".join(f"{name} {v}" for name, v in about["libraries"].items())
    return "\n".join(
        [
            f"- CPU: {about['cpu']}, {about['logical_cpus']} logical CPUs; flags: {' '.join(about['cpu_flags'])}",
            f"- threads for every method: {about['threads']}; Python {about['python']} on {about['platform']}",
            f"- libraries: {libraries}",
            f"- GPU: {about['gpu']}",
            "- fp32 matrix multiply, 4096 x 4096, GFLOP/s: "
            + ", ".join(f"{name} {value:.0f}" for name, value in peaks.items())
            + f"; the peak used below is the best, {max(peaks.values()):.0f}",
        ]
    )


def evaluation_section(rows: list[dict[str, Any]], peak: float) -> str:
    ort = {(r["device"], r["pooling"], r["size"]): r for r in rows if r["method"] == "onnxruntime" and "error" not in r}
    table = []
    for r in rows:
        where = f"{r['pooling']} | {r['size']} px ({r.get('width', '?')}x{r.get('height', '?')}) | {r['device']}"
        if "error" in r:
            table.append([*where.split(" | "), r["method"], "failed: " + r["error"][:80], "", "", "", ""])
            continue
        base = ort.get((r["device"], r["pooling"], r["size"]))
        speedup = f"{r['median_s'] / base['median_s']:.2f}x" if base else "n/a"
        compile_note = f" (compile {r['compile_s']:.0f} s)" if r.get("compile_s") else ""
        table.append(
            [
                *where.split(" | "),
                r["method"] + compile_note,
                f"{r['median_s'] * 1e3:.0f}",
                speedup,
                f"{r['gflops_per_s']:.0f}",
                f"{r['gflops_per_s'] / peak:.0%}",
                f"{r['peak_rss_mb']:.0f}",
            ]
        )
    header = [
        "pooling",
        "size",
        "device",
        "method",
        "ms per evaluation (median of 5)",
        "its time / onnxruntime's",
        "GFLOP/s",
        "of matmul peak",
        "peak RSS MB",
    ]
    return _table(header, table)


def service_section(data: dict[str, Any]) -> str:
    local, remote = data["in_process"], data["service"]
    bare = local["bare_evaluation_s"]
    width, height = local["size"]
    lines = [
        f"{width}x{height} px, {data['evaluations']} evaluations, images: {data['images']}; "
        f"bare evaluation {bare * 1e3:.0f} ms (the same evaluator called back to back).",
        "",
    ]
    rows = []
    for name, run in local["optimisers"].items():
        rows.append(
            [
                f"{name}, in-process",
                f"{run['final_loss']:.6g}",
                f"{(run['evaluation_s'] + run['host_s_per_evaluation']) * 1e3:.0f}",
                f"{run['host_s_per_evaluation'] * 1e3:.1f}",
                f"{run['host_fraction']:.2%}",
            ]
        )
    for name, job in remote["jobs"].items():
        # The server times its own evaluations (Result.timings.evaluate_s); the rest of its loop is host time.
        host = (job["optimise_s"] - job["evaluate_s"]) / job["evaluations"]
        rows.append(
            [
                f"{name}, through gRPC + client, previews every {data['preview_every']}",
                f"{job['final_loss']:.6g}",
                f"{job['optimise_s'] / job['evaluations'] * 1e3:.0f}",
                f"{host * 1e3:.1f}",
                f"{host / (job['evaluate_s'] / job['evaluations']):.2%}",
            ]
        )
    lines.append(
        _table(
            ["run", "final loss", "ms per evaluation, all in", "host ms per evaluation", "host time / evaluation time"],
            rows,
        )
    )
    lines += ["", f"Server peak RSS after the {width} px jobs: {remote['peak_rss_mb_after_512px_jobs']:.0f} MB.", ""]
    sizes = remote["memory_by_size"]
    lines.append(
        _table(
            ["job (longest side, 4 evaluations)", "RSS after MB", "peak RSS so far MB", "s per evaluation"],
            [
                [str(r["side"]), f"{r['rss_mb']:.0f}", f"{r['peak_rss_mb']:.0f}", f"{r['s_per_evaluation']:.3f}"]
                for r in sizes
            ],
        )
    )
    return "\n".join(lines)


def profile_section(profiles: dict[str, Any], rows: list[dict[str, Any]], top: int = 8) -> str:
    """Per pooling: onnxruntime's time by operator type in one evaluation, the biggest first, and how much faster
    than PyTorch eager it could be at most if everything but the convolutions and Gram products took no time."""
    parts = []
    for pooling, result in profiles.items():
        width, height = result["size"]
        operators = list(result["operators"].items())
        floor_ms = sum(row["ms"] for op, row in operators if op in ("Conv", "MatMul", "FusedMatMul"))
        eager = next(
            (r for r in rows if (r["method"], r["pooling"], r.get("width")) == ("torch-eager", pooling, width)), None
        )
        bound = (
            f" Convolutions and Gram products take {floor_ms:.0f} ms; PyTorch eager's {eager['median_s'] * 1e3:.0f} ms "
            f"is {eager['median_s'] * 1e3 / floor_ms:.2f}x that, the most onnxruntime could be faster at this size."
            if eager and "error" not in eager
            else ""
        )
        table = [[op, f"{row['ms']:.1f}", f"{row['share']:.1%}", str(row["nodes"])] for op, row in operators[:top]]
        rest = operators[top:]
        table.append(
            [
                f"{len(rest)} other operator types",
                f"{sum(row['ms'] for _, row in rest):.1f}",
                f"{sum(row['share'] for _, row in rest):.1%}",
                str(sum(row["nodes"] for _, row in rest)),
            ]
        )
        parts.append(
            f"{pooling} pooling, {width}x{height}: {result['evaluation_ms']:.0f} ms per profiled evaluation; the "
            f"convolutions run at {result['conv_gflops_per_s']:.0f} GFLOP/s.{bound}\n\n"
            + _table(["operator", "ms per evaluation", "share", "nodes"], table)
        )
    return "\n\n".join(parts)


def formulations_section(timings: dict[str, float]) -> str:
    return _table(["formulation (64x384x512 tensor)", "ms"], [[name, f"{ms:.1f}"] for name, ms in timings.items()])


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if "error" not in r:
            label = f"{r['method']} ({r['pooling']} pool, {r['device']})"
            series.setdefault(label, []).append((r["width"] * r["height"], r["median_s"]))
    for label, points in sorted(series.items()):
        points.sort()
        axes.plot([p / 1e6 for p, _ in points], [s for _, s in points], marker="o", label=label)
    axes.set_xlabel("image size (megapixels)")
    axes.set_ylabel("seconds per loss+gradient evaluation")
    axes.set_title("One Gatys evaluation, median of 5")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def _replace(doc: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    if not pattern.search(doc):
        raise ValueError(f"BENCHMARKS.md has no <!-- bench:{name} --> section")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), doc)


def render(results: Path, doc: Path = DOC) -> None:
    about = _load(results, "machine")
    rows = _load(results, "evaluation")
    text = doc.read_text()
    text = _replace(text, "targets", targets_section(about, rows, _load(results, "service")))
    text = _replace(text, "machine", machine_section(about))
    text = _replace(text, "evaluation", evaluation_section(rows, max(about["matmul_gflops_per_s"].values())))
    text = _replace(text, "service", service_section(_load(results, "service")))
    text = _replace(text, "formulations", formulations_section(_load(results, "formulations")))
    text = _replace(text, "profile", profile_section(_load(results, "profile"), rows))
    doc.write_text(text)
    plot(rows, results / PLOT)
    print(f"bench: wrote {doc} and {results / PLOT}", file=sys.stderr)


if __name__ == "__main__":
    render(Path(__file__).resolve().parent / "results")
