"""The steps of `bash bench/gpu.sh`, each a subcommand that adds to one JSON file, the run's product.

    python -m bench.gpu onnxruntime --device cuda [--wheelhouse DIR --distribution onnxruntime-gpu --version V]
    python -m bench.gpu environment
    python -m bench.gpu parity      --model DIR --device cuda
    python -m bench.gpu placement   --model DIR --device cuda --sides 512,1024 --settings off:exhaustive,on:exhaustive
    python -m bench.gpu throughput  --model DIR --device cuda --side 512 --jobs 1,2,4
    python -m bench.gpu needs STEP                        (exit 0, or 3 naming the modules STEP needs and lacks)
    python -m bench.gpu step        --name NAME --status STATUS --seconds S
    python -m bench.gpu report      --markdown OUT.md [--benchmarks BENCHMARKS.md]
    (every one with --json OUT.json)

``onnxruntime`` installs onnxruntime-gpu offline from a wheelhouse into this interpreter's environment (pip,
never --target), then runs the smoke test: ``preload_dlls()``, a one-Conv session with CUDA first, and
``get_providers()[0]`` must be CUDA (``get_available_providers()`` lists CUDA even where its libraries cannot
load); it records onnxruntime's, the CUDA runtime's and cuDNN's versions. ``placement`` runs ``bench.placement``
once per size and CUDA setting (TF32, cuDNN's search) in its own process, sampling the GPU's memory in use with
nvidia-smi meanwhile, so each size's peak and first (cold) evaluation are its own. ``report`` turns the JSON into
the markdown section, on this machine or any other later, and only with ``--benchmarks`` puts it into
BENCHMARKS.md between the GPU_SH markers. Every step records the device it ran on: a dry run
(`gpu.sh --dry-run`) on a CPU says so in every row and in the section's first line, so its numbers can never pass
for a GPU's.

Only the standard library is imported at the top: the install step must run in an environment whose onnxruntime
is about to be replaced, and ``needs`` in one that lacks the extras it reports.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- GPU_SH: begin (written by bench/gpu.sh) -->", "<!-- GPU_SH: end -->"
SKIPPED = "skipped: no CUDA"
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
# The pin of the GPU image and of `gpu.sh --wheelhouse` (the Dockerfile reads the same file).
PIN_FILE = Path(__file__).resolve().parents[1] / "deploy" / "docker" / "onnxruntime-gpu.version"

# The modules each step imports, by the extra that brings them (pyproject.toml): a step whose modules are missing
# is skipped, and the run says which.
NEEDS: dict[str, tuple[str, ...]] = {
    "export": ("torch", "onnx", "onnxruntime", "scipy"),
    "parity": ("torch", "onnx", "onnxruntime", "scipy"),
    "placement": ("onnx", "onnxruntime", "scipy"),
    "throughput": (
        "onnx",
        "onnxruntime",
        "scipy",
        "grpc",
        "grpc_health",
        "grpc_reflection",
        "prometheus_client",
        "PIL",
    ),
}
_PROVIDED_BY = {"torch": "export extra", "grpc": "base install", "grpc_health": "base install", "PIL": "base install"}

# Which CUDA major each onnxruntime-gpu release on PyPI is built for (the wheels' own requirements, as read for
# issue 26): 1.22 to 1.26 for CUDA 12 (driver 525 or later), 1.27 on for CUDA 13 (driver 580 or later). cuDNN 9
# throughout.
CUDA_BUILDS: tuple[tuple[tuple[int, int], int, str], ...] = (((1, 27), 13, "580"), ((1, 22), 12, "525"))


class StepFailed(Exception):
    """A step could not do its work; the message says why, and what to do."""


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _store(path: Path, key: str, value: Any) -> None:
    data = _load(path)
    data[key] = value
    path.write_text(json.dumps(data, indent=1) + "\n")


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def cuda_build(version: str) -> tuple[int, str] | None:
    """(CUDA major, minimum NVIDIA driver) that onnxruntime-gpu ``version`` needs; None before 1.22."""
    release = _release(version)
    return next(((major, driver) for first, major, driver in CUDA_BUILDS if release[:2] >= first), None)


def cuda_version(code: int) -> str:
    """cudaRuntimeGetVersion's and cudaDriverGetVersion's number as major.minor: 13000 -> "13.0"."""
    return f"{code // 1000}.{code % 1000 // 10}"


def cudnn_version(code: int) -> str:
    """cudnnGetVersion's number as major.minor.patch: 90100 -> "9.1.0" (cuDNN 9 on), 8906 -> "8.9.6" (before)."""
    major, rest = (code // 10000, code % 10000) if code >= 90000 else (code // 1000, code % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def loaded_libraries(maps: str) -> dict[str, str]:
    """The CUDA runtime's and cuDNN's files among the mappings of a process (the text of /proc/PID/maps)."""
    found: dict[str, str] = {}
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6:
            continue
        name = Path(fields[5]).name
        for key, prefix in (("cudart", "libcudart.so"), ("cudnn", "libcudnn.so")):
            if name.startswith(prefix):
                found.setdefault(key, fields[5])
    return found


def _library_versions() -> dict[str, str]:
    """Versions of the CUDA runtime, the driver's CUDA and cuDNN that this process loaded (after a CUDA session)."""
    libraries = loaded_libraries(Path("/proc/self/maps").read_text())
    versions = {"cuda_runtime": "not loaded", "cuda_driver": "unknown", "cudnn": "not loaded"}
    if "cudart" in libraries:
        cudart, code = ctypes.CDLL(libraries["cudart"]), ctypes.c_int()
        if cudart.cudaRuntimeGetVersion(ctypes.byref(code)) == 0:
            versions["cuda_runtime"] = f"{cuda_version(code.value)} ({libraries['cudart']})"
        if cudart.cudaDriverGetVersion(ctypes.byref(code)) == 0:
            versions["cuda_driver"] = cuda_version(code.value)
    if "cudnn" in libraries:
        cudnn = ctypes.CDLL(libraries["cudnn"])
        cudnn.cudnnGetVersion.restype = ctypes.c_size_t
        versions["cudnn"] = f"{cudnn_version(cudnn.cudnnGetVersion())} ({libraries['cudnn']})"
    return versions


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _onnxruntime_distribution() -> str:
    """Which distribution installed the module ``onnxruntime`` (both builds install it under that name)."""
    return next((d for d in ("onnxruntime-gpu", "onnxruntime") if _installed(d)), "onnxruntime (not installed)")


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    print(done.stdout + done.stderr, end="", flush=True)
    return done


def install(wheelhouse: Path, distribution: str, version: str) -> dict[str, Any]:
    """Replace this environment's onnxruntime with ``distribution==version`` from ``wheelhouse``, offline.

    ``version`` "installed" (the dry run) reinstalls the version this environment has. The wheel is looked for
    before anything is removed, so that a wheelhouse without it leaves the environment as it was.
    """
    if version == "installed":
        version = _installed(distribution) or ""
        if not version:
            raise StepFailed(f"--version installed, but {distribution} is not installed here")
    wheel = f"{distribution.replace('-', '_')}-{version}-"
    wheels = sorted(path.name for path in wheelhouse.glob("*.whl")) if wheelhouse.is_dir() else []
    if not any(name.lower().startswith(wheel) for name in wheels):
        raise StepFailed(
            f"--wheelhouse {wheelhouse}: no {wheel}*.whl there (it holds {', '.join(wheels) or 'no wheels'}); "
            f"make one where there is network: pip download {distribution}=={version} -d {wheelhouse.name} "
            f"--python-version {sys.version_info.major}.{sys.version_info.minor} --only-binary=:all:"
        )
    before = {d: v for d in ("onnxruntime", "onnxruntime-gpu") if (v := _installed(d))}
    # Both distributions install the module `onnxruntime`: with both present, one overwrites the other's files.
    _pip("uninstall", "--yes", "onnxruntime", "onnxruntime-gpu")
    done = _pip("install", "--no-index", "--find-links", str(wheelhouse), f"{distribution}=={version}")
    if done.returncode:
        reason = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        lost = ", ".join(f"{d}=={v}" for d, v in before.items()) or "none"
        raise StepFailed(
            f"pip could not install {distribution}=={version} from {wheelhouse}: {reason} (its dependencies must be "
            f"installed or in the wheelhouse too); removed before: {lost}"
        )
    importlib.invalidate_caches()
    return {"distribution": distribution, "version": _installed(distribution), "wheelhouse": str(wheelhouse)}


def _one_conv() -> tuple[bytes, Any, Any]:
    """A model of one 3x3 convolution (zero padding 1), its input and its weight."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    image = rng.random((1, 3, 16, 16), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "one_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString(), image, weight


def smoke(device: str) -> dict[str, Any]:
    """One Conv on ``device``'s provider; CUDA must really be the session's first provider."""
    import numpy as np

    try:
        import onnxruntime as ort
    except ImportError as error:
        raise StepFailed(f"onnxruntime does not import: {error}") from error
    distribution = _onnxruntime_distribution()
    record: dict[str, Any] = {"device": device, "distribution": distribution, "onnxruntime": ort.__version__}
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise StepFailed(
            f"{distribution} {ort.__version__} has no CUDA provider (it lists {available}): install onnxruntime-gpu "
            "(bash bench/gpu.sh --wheelhouse DIR)"
        )
    build = cuda_build(ort.__version__)
    needs = (
        f"{distribution} {ort.__version__} is a CUDA {build[0]} build: it needs CUDA {build[0]} and cuDNN 9 "
        f"libraries and an NVIDIA driver {build[1]} or later (nvidia-smi shows the driver; the libraries come from "
        "nvidia-* wheels in this environment or the loader's path)"
        if build
        else f"{distribution} {ort.__version__} is older than the project supports (1.22)"
    )
    try:
        if device == "cuda" and hasattr(ort, "preload_dlls"):
            # CUDA and cuDNN from the nvidia-* wheels in this environment (torch's, or onnxruntime-gpu[cuda,cudnn]).
            ort.preload_dlls()
        model, image, weight = _one_conv()
        want = CUDA if device == "cuda" else CPU
        session = ort.InferenceSession(model, providers=[want, CPU] if device == "cuda" else [CPU])
    except Exception as error:  # onnxruntime's own types (Fail, RuntimeException, ...)
        raise StepFailed(f"no session on {device}: {error}. {needs}") from error
    record["providers"] = session.get_providers()
    if record["providers"][0] != want:
        raise StepFailed(
            f"CUDA did not start: {distribution} {ort.__version__} lists {available}, but the session got "
            f"{record['providers']}, so its CUDA or cuDNN libraries did not load (onnxruntime's log above names "
            f"the one missing). {needs}"
        )
    got = session.run(None, {"x": image})[0]
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(image, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), (2, 3))
    expected = np.einsum("bchwij,ocij->bohw", windows, weight)
    record["conv_relative_error"] = float(np.linalg.norm(got - expected) / np.linalg.norm(expected))
    if record["conv_relative_error"] > 1e-2:  # TF32 (onnxruntime's default here) errs by about 1e-3
        raise StepFailed(f"the Conv on {want} is wrong: relative error {record['conv_relative_error']:.2e}")
    record |= _library_versions() if device == "cuda" else {"cuda_runtime": SKIPPED, "cudnn": SKIPPED}
    print(f"smoke test on {device}: {json.dumps(record)}", flush=True)
    return record


def onnxruntime_step(args: argparse.Namespace) -> dict[str, Any]:
    """Install from ``--wheelhouse`` if given, then the smoke test."""
    start = time.perf_counter()
    installed = install(args.wheelhouse, args.distribution, args.version) if args.wheelhouse else "as found"
    return {"install": installed, **smoke(args.device), "seconds": time.perf_counter() - start}


def machine(args: argparse.Namespace) -> str:
    """The GPU's name (nvidia-smi) or, without one, the CPU's and its core count."""
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader", "--id=0"]
        return "GPU " + subprocess.run(query, capture_output=True, text=True, check=True).stdout.strip()
    from bench.machine import describe

    cpu = describe(0)
    return f"CPU {cpu['cpu']}, {cpu['logical_cpus']} logical cores (no GPU)"


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """Python, the libraries' versions (torch's too: the host's may not be the export's pin) and where the
    project's packages come from."""
    nst_server = importlib.util.find_spec("nst_server")
    origin = Path(nst_server.origin) if nst_server and nst_server.origin else None
    source = origin is not None and origin.is_relative_to(PIN_FILE.parents[2] / "server")
    project = "missing" if origin is None else "this source tree (PYTHONPATH)" if source else "installed"
    versions = {name: _installed(name) or "not installed" for name in ("torch", "onnx", "numpy", "scipy", "grpcio")}
    versions[_onnxruntime_distribution()] = _installed("onnxruntime-gpu") or _installed("onnxruntime") or "-"
    return {"python": sys.version.split()[0], "project": project, "pin": PIN_FILE.read_text().strip(), **versions}


def missing(step: str) -> list[str]:
    """The modules ``step`` needs that this environment cannot import."""
    return [module for module in NEEDS[step] if importlib.util.find_spec(module) is None]


def parity(args: argparse.Namespace) -> dict[str, Any]:
    """The exported graphs against PyTorch autograd (``nst_export.parity``) on ``--device``'s provider, with TF32
    off (the float32 tolerances must hold) and, on CUDA, on (its error is reported, not held to them)."""
    from nst_export.cli import PARITY_SIZE
    from nst_export.parity import check_parity, random_images
    from nst_export.vgg import VGG19Features, deepest_layer
    from nst_export.weights import init_random
    from nst_server.config import CudaSettings
    from nst_server.runtime.graphs import LossGraphs

    manifest = LossGraphs(args.model, "cpu").manifest
    model = VGG19Features(deepest_layer(manifest.content_layers + manifest.style_layers), manifest.pooling)
    init_random(model, manifest.seed or 0)
    images = random_images(*PARITY_SIZE, seed=manifest.seed or 0)
    report = check_parity(args.model, model, *images, device=args.device, cuda=CudaSettings(tf32=False))
    print(f"parity on {args.device}, TF32 off: {report}", flush=True)
    record = {"device": args.device, "passed": report.passed, "report": str(report)}
    if args.device == "cuda":
        tf32 = check_parity(args.model, model, *images, device=args.device, cuda=CudaSettings(tf32=True))
        print(f"parity on {args.device}, TF32 on (reported, not held to the float32 tolerances): {tf32}", flush=True)
        record |= {"tf32_on": str(tf32), "tf32_on_gradient_error": tf32.grad, "tf32_on_within": tf32.passed}
    else:
        record["tf32_on"] = SKIPPED
    return record | _context()


def _context() -> dict[str, Any]:
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(), "load": os.getloadavg()[0]}


class _MemoryPoller:
    """The GPU's memory in use (nvidia-smi, MiB), sampled every 50 ms while running; ``peak`` above the start."""

    def __init__(self) -> None:
        self.baseline = self._used()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def _used() -> int:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.split()[0])

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._used())

    def __enter__(self) -> _MemoryPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def cuda_settings(text: str) -> list[tuple[str, str]]:
    """ "off:exhaustive,on:heuristic" -> [("off", "exhaustive"), ("on", "heuristic")]: TF32 and cuDNN's search."""
    settings = []
    for item in text.split(","):
        tf32, _, search = item.partition(":")
        if tf32 not in ("on", "off") or search not in ("exhaustive", "heuristic", "default"):
            raise argparse.ArgumentTypeError(f"{item!r}: want TF32:SEARCH, TF32 on|off, SEARCH exhaustive|heuristic")
        settings.append((tf32, search))
    return settings


def placement(args: argparse.Namespace) -> dict[str, Any]:
    """``bench.placement`` per size and CUDA setting in its own process: ms per evaluation (the first, cold one
    beside the warm ones) and per iteration, host vs device placement, and each size's peak memory. A size that
    fails or runs past ``--timeout`` is recorded and the others go on."""
    rows: list[dict[str, Any]] = []
    peaks: dict[str, Any] = {}
    failures: list[str] = []
    on_cuda = args.device == "cuda"
    settings = args.settings if on_cuda else args.settings[:1]  # the CPU provider has no such settings
    for side in args.sides.split(","):
        for tf32, search in settings:
            out = args.json.with_suffix(f".placement-{side}-{tf32}-{search}.json")
            command = [sys.executable, "-m", "bench.placement", "--model", str(args.model), "--device", args.device]
            command += ["--sides", side, "--iterations", str(args.iterations), "--repeats", str(args.repeats)]
            command += ["--cuda-tf32", tf32, "--cuda-conv-search", search, "--json", str(out)]
            what = f"{side} px, TF32 {tf32}, {search} search" if on_cuda else f"{side} px"
            start = time.perf_counter()
            try:
                if on_cuda and shutil.which("nvidia-smi"):
                    with _MemoryPoller() as poller:
                        subprocess.run(command, check=True, timeout=args.timeout)
                    peak = {"peak_mib_above_idle": poller.peak - poller.baseline, "idle_mib": poller.baseline}
                else:
                    subprocess.run(command, check=True, timeout=args.timeout)
                    peak = SKIPPED
            except subprocess.TimeoutExpired:
                failures.append(f"{what}: timed out after {args.timeout:g} s")
                continue
            except subprocess.CalledProcessError as error:
                failures.append(f"{what}: exit {error.returncode}")
                continue
            print(f"{what}: {time.perf_counter() - start:.0f} s; peak device memory: {peak}", flush=True)
            peaks[f"{side}" if not on_cuda else f"{side} {tf32} {search}"] = peak
            rows += json.loads(out.read_text())["rows"]
            out.unlink()
    return {"device": args.device, "rows": rows, "peak_device_memory": peaks, "failures": failures} | _context()


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Jobs per minute through one nst-server with --max-concurrent the largest count, 1, 2, 4... at a time."""
    import numpy as np
    from nst_client import Result, StyleClient
    from nst_server.testing import start_server
    from PIL import Image

    counts = [int(c) for c in args.jobs.split(",")]
    rng = np.random.default_rng(0)
    images = []
    for name in ("content.png", "style.png"):
        path = args.json.parent / f"throughput-{name}"
        small = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((args.side, args.side * 3 // 4), Image.Resampling.BICUBIC).save(path)
        images.append(path)
    flags = ["--device", args.device, "--max-concurrent", str(max(counts)), "--max-queue", str(max(counts))]
    flags += ["--optimizer-placement", args.placement]
    server = start_server([args.model], *flags, metrics=False, timeout_s=300)
    rows = []
    try:
        with StyleClient(server.address) as client:

            def job(_: int) -> float:
                for event in client.stylize(*images, max_side_px=args.side, max_evaluations=args.evaluations):
                    if isinstance(event, Result):
                        return event.timings.optimise_s
                raise RuntimeError("the stream ended without a result")

            job(0)  # the first job at this size warms the sessions up
            for count in counts:
                start = time.perf_counter()
                with ThreadPoolExecutor(count) as pool:
                    optimise_s = list(pool.map(job, range(count)))
                wall = time.perf_counter() - start
                row = {"concurrent": count, "wall_s": wall, "jobs_per_minute": 60 * count / wall}
                rows.append(row | {"mean_optimise_s": sum(optimise_s) / count})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
    for path in images:
        path.unlink()
    return {
        "device": args.device,
        "placement": args.placement,
        "side": args.side,
        "evaluations": args.evaluations,
        "rows": rows,
        **_context(),
    }


def _setting(row: dict[str, Any]) -> str:
    return f"TF32 {row['tf32']}, {row['conv_search']}" if "tf32" in row else "-"


def _placement_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| size | CUDA settings | optimizer | placement | first eval ms | loss ms/eval | step ms/it | host ms/it | "
        "host CPU ms/it | ms/iteration | loss after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['side']} | {_setting(r)} | {r['optimizer']} | {r['placement']} | {r.get('cold_ms', math.nan):.1f} "
            f"| {r['loss_ms']:.1f} | {r['step_ms']:.2f} | {r['host_ms']:.2f} | {r['host_cpu_ms']:.2f} "
            f"| {r['iteration_ms']:.1f} | {r['loss']:.4g} |"
        )
    return lines


def tf32_effect(rows: list[dict[str, Any]]) -> list[str]:
    """Per size and optimiser (device placement, exhaustive search): the loss reached and ms per evaluation with
    TF32 on, relative to off: whether L-BFGS's line search tolerates TF32 gradients, and what TF32 saves."""
    key = {(r["side"], r["optimizer"], r["tf32"]): r for r in rows if r.get("conv_search") == "exhaustive"}
    lines = []
    for (side, optimizer, tf32), on in sorted(key.items()):
        off = key.get((side, optimizer, "off"))
        if tf32 != "on" or off is None or on["placement"] != "device":
            continue
        lines.append(
            f"- {side} px, {optimizer}: loss with TF32 on / off {on['loss'] / off['loss']:.4f}, "
            f"ms per evaluation on / off {on['loss_ms'] / off['loss_ms']:.2f}"
        )
    return lines


def markdown(data: dict[str, Any]) -> str:
    """The BENCHMARKS.md section from the JSON of one gpu.sh run."""
    devices = {step["device"] for step in data.values() if isinstance(step, dict) and "device" in step}
    on_gpu = devices == {"cuda"}
    head = "Measured on a GPU by `bash bench/gpu.sh`."
    if not on_gpu:
        head = "A dry run on the CPU (`bash bench/gpu.sh --dry-run`): no figure here comes from a GPU; the CUDA-only "
        head += "steps were skipped."
    lines = [head, "", f"Machine: {data.get('machine', 'unknown')}", ""]
    if "environment" in data:
        lines += ["Environment: " + ", ".join(f"{k} {v}" for k, v in data["environment"].items()), ""]
    if data.get("steps"):
        lines += ["| step | status | seconds |", "|---|---|---|"]
        lines += [f"| {s['name']} | {s['status']} | {s['seconds']} |" for s in data["steps"]]
        lines += [""]
    if "onnxruntime" in data:
        o = data["onnxruntime"]
        if o.get("passed") is False:
            lines += [f"- Smoke test on `{o['device']}`: FAILED: {o.get('error')}"]
        else:
            lines += [
                f"- Smoke test on `{o['device']}`: a Conv on {o['providers'][0]} with {o['distribution']} "
                f"{o['onnxruntime']}; CUDA runtime {o['cuda_runtime']}, cuDNN {o['cudnn']}"
            ]
    if "parity" in data:
        p = data["parity"]
        lines += [
            f"- Parity with PyTorch on `{p['device']}`, TF32 off: {'passed' if p['passed'] else 'FAILED'} "
            f"({p['report']}); TF32 on: {p['tf32_on']}"
        ]
    if "placement" in data:
        pl = data["placement"]
        lines += ["", f"Per iteration, host against device placement (`{pl['device']}`, load {pl['load']:.1f}):", ""]
        lines += _placement_table(pl["rows"])
        peaks = pl["peak_device_memory"]
        lines += ["", "Peak device memory: " + ", ".join(f"{key} px: {peak}" for key, peak in peaks.items())]
        if effect := tf32_effect(pl["rows"]):
            lines += ["", "TF32 on against off (device placement, exhaustive search):", "", *effect]
        if pl.get("failures"):
            lines += ["", "Failed: " + "; ".join(pl["failures"])]
    if "throughput" in data:
        t = data["throughput"]
        lines += [
            "",
            f"Throughput, {t['side']} px jobs of {t['evaluations']} evaluations, placement {t['placement']} "
            f"(`{t['device']}`):",
            "",
            "| concurrent jobs | wall s | jobs/minute |",
            "|---|---|---|",
        ]
        lines += [f"| {r['concurrent']} | {r['wall_s']:.1f} | {r['jobs_per_minute']:.2f} |" for r in t["rows"]]
    return "\n".join(lines) + "\n"


def report(args: argparse.Namespace) -> None:
    section = markdown(_load(args.json))
    args.markdown.write_text(section)
    print(section)
    if args.benchmarks:
        text = args.benchmarks.read_text()
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{args.benchmarks}: no {BEGIN} ... {END} markers to write between")
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        args.benchmarks.write_text(f"{before}{BEGIN}\n{section}{END}{after}")
        print(f"wrote the section into {args.benchmarks}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    names = ("onnxruntime", "machine", "environment", "parity", "placement", "throughput", "needs", "step", "report")
    steps = {name: sub.add_parser(name) for name in names}
    for name in ("parity", "placement", "throughput"):
        steps[name].add_argument("--model", type=Path, required=True)
    for name in ("onnxruntime", "parity", "placement", "throughput"):
        steps[name].add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    for name in set(names) - {"needs"}:
        steps[name].add_argument("--json", type=Path, required=True)
    steps["onnxruntime"].add_argument("--wheelhouse", type=Path, help="install from these wheels only (offline)")
    steps["onnxruntime"].add_argument("--distribution", default="onnxruntime-gpu")
    steps["onnxruntime"].add_argument("--version", default=PIN_FILE.read_text().strip(), help="or: installed")
    steps["placement"].add_argument("--sides", default="256,512,1024,2048")
    steps["placement"].add_argument("--settings", type=cuda_settings, default="off:exhaustive,on:exhaustive")
    steps["placement"].add_argument("--iterations", type=int, default=10)
    steps["placement"].add_argument("--repeats", type=int, default=2)
    steps["placement"].add_argument("--timeout", type=float, default=600, help="seconds per size and setting")
    steps["throughput"].add_argument("--side", type=int, default=512)
    steps["throughput"].add_argument("--evaluations", type=int, default=30)
    steps["throughput"].add_argument("--jobs", default="1,2,4")
    steps["throughput"].add_argument("--placement", default="auto")
    steps["needs"].add_argument("needed_by", choices=sorted(NEEDS))
    steps["step"].add_argument("--name", required=True)
    steps["step"].add_argument("--status", required=True)
    steps["step"].add_argument("--seconds", type=int, required=True)
    steps["report"].add_argument("--markdown", type=Path, required=True)
    steps["report"].add_argument("--benchmarks", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one step; exit 1 when it failed (its record says why), 3 from ``needs`` when modules are missing."""
    args = _parser().parse_args(argv)
    if args.step == "needs":
        if lacking := missing(args.needed_by):
            extras = sorted({_PROVIDED_BY.get(module, "server extra") for module in lacking})
            print(f"needs {', '.join(lacking)} (not installed: the {' and '.join(extras)})")
            return 3
        return 0
    if args.step == "report":
        report(args)
        return 0
    if args.step == "step":
        data = _load(args.json)
        entry = {"name": args.name, "status": args.status, "seconds": args.seconds}
        _store(args.json, "steps", [*data.get("steps", []), entry])
        return 0
    run = {
        "onnxruntime": onnxruntime_step,
        "machine": machine,
        "environment": environment,
        "parity": parity,
        "placement": placement,
        "throughput": throughput,
    }[args.step]
    try:
        record = run(args)
    except StepFailed as error:
        print(f"bench.gpu {args.step}: FAILED: {error}", file=sys.stderr, flush=True)
        _store(args.json, args.step, {"device": getattr(args, "device", None), "passed": False, "error": str(error)})
        return 1
    _store(args.json, args.step, record)
    failed = isinstance(record, dict) and (record.get("passed") is False or record.get("failures"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
