"""`bash bench/gpu.sh --dry-run`: the prepared GPU check runs end to end on the CPU, so CI keeps it working.

Every step runs (at small sizes, on the CPU provider) but the CUDA-only parts, which say "skipped: no CUDA"; the
JSON and the markdown section say the run was on the CPU, never that a figure came from a GPU. The offline install
(`--wheelhouse`) runs in a throwaway virtualenv that sees this environment's packages but onnxruntime, never in
this one: from a wheelhouse of onnxruntime CPU wheels downloaded here, and from a fake one whose onnxruntime-gpu
lists CUDA but cannot start it, as a GPU host with the wrong CUDA would.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from bench import gpu

REPO_ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO_ROOT / ".cache" / "gpu-wheelhouse"  # onnxruntime CPU wheels, downloaded once
PIN = gpu.PIN_FILE.read_text().strip()


def _env(python: Path) -> dict[str, str]:
    return {**os.environ, "PYTHON": str(python), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _gpu_sh(python: Path, *flags: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "bench/gpu.sh", *flags],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=_env(python),
        stdin=subprocess.DEVNULL,
    )


def _throwaway_venv(path: Path, leave_out: tuple[str, ...] = ("onnxruntime",)) -> Path:
    """A virtualenv with pip that imports this environment's packages but those named in ``leave_out`` (by prefix;
    a directory of links to them, on its path by a .pth file), so that what pip installs or removes there is its
    own. Leaving this project's packages out makes gpu.sh run them from the source tree; leaving torch out, as a
    GPU host without the export extra would."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    query = [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    site = Path(subprocess.run(query, capture_output=True, text=True, check=True).stdout.strip())
    shared = path / "shared-site-packages"
    shared.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("pip", *leave_out)) and not entry.name.endswith(".pth"):
            (shared / entry.name).symlink_to(entry)
    (site / "shared.pth").write_text(f"{shared}\n")
    return python


def _onnxruntime_wheelhouse() -> tuple[Path, str]:
    """This environment's onnxruntime release as a wheel, from the package index (once; then from the cache)."""
    version = importlib.metadata.version("onnxruntime")
    if not list(WHEELHOUSE.glob(f"onnxruntime-{version}-*.whl")):
        download = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        done = subprocess.run(
            [*download, "--dest", str(WHEELHOUSE), f"onnxruntime=={version}"], capture_output=True, text=True
        )
        if done.returncode:
            reason = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            pytest.skip(f"cannot download onnxruntime=={version}, so the wheelhouse install is NOT tested: {reason}")
    return WHEELHOUSE, version


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # minutes: an export, two sizes of both placements and a server
def test_dry_run_end_to_end(tmp_path: Path) -> None:
    """The whole run, throughput included, in this environment as it is (no --wheelhouse: nothing installed)."""
    done = _gpu_sh(Path(sys.executable), "--dry-run", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("skipped: no CUDA") >= 3, done.stdout  # the smoke test, CUDA parity, peak memory
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["machine"].startswith("CPU")
    assert data["parity"]["passed"]
    assert data["parity"]["tf32_on"] == gpu.SKIPPED
    assert {step["device"] for step in (data["parity"], data["placement"], data["throughput"])} == {"cpu"}
    rows = data["placement"]["rows"]
    assert {(r["side"], r["optimizer"], r["placement"]) for r in rows} == {
        (side, optimizer, placement)
        for side in (64, 96)
        for optimizer in ("lbfgs", "adam")
        for placement in ("host", "device")
    }
    assert all(r["cold_ms"] > 0 and r["loss_ms"] > 0 and r["iteration_ms"] >= r["loss_ms"] for r in rows)
    assert [r["concurrent"] for r in data["throughput"]["rows"]] == [1, 2]
    assert [s["status"] for s in data["steps"]] == ["ok"] * 6
    section = (tmp_path / "gpu.md").read_text()
    assert section.startswith("A dry run on the CPU")
    assert "no figure here comes from a GPU" in section
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gpu.json", "gpu.md"]  # the model lived elsewhere


@pytest.mark.slow  # a virtualenv, an export, two sizes of both placements
def test_quick_dry_run_installs_from_a_wheelhouse(tmp_path: Path) -> None:
    """`--dry-run --quick --wheelhouse DIR`: step 1 removes the environment's onnxruntime and installs it again
    from DIR alone (the same pip commands as onnxruntime-gpu's on a GPU host), then every step but throughput
    runs on it, the project from this source tree (it is not installed in that environment, as on a GPU host);
    BENCHMARKS.md is not touched."""
    wheelhouse, version = _onnxruntime_wheelhouse()
    python = _throwaway_venv(tmp_path / "venv", ("onnxruntime", "nst", "neuralstyletransfer"))
    install = [str(python), "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheelhouse)]
    subprocess.run([*install, f"onnxruntime=={version}"], check=True, env=_env(python))
    benchmarks = _digest(REPO_ROOT / "BENCHMARKS.md")
    out = tmp_path / "out"
    done = _gpu_sh(python, "--dry-run", "--quick", "--wheelhouse", str(wheelhouse), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Successfully uninstalled onnxruntime-{version}" in done.stdout, done.stdout
    assert f"Successfully installed onnxruntime-{version}" in done.stdout, done.stdout
    where = subprocess.run([str(python), "-c", "import onnxruntime; print(onnxruntime.__file__)"], **_captured())
    assert Path(where.stdout.strip()).is_relative_to(tmp_path / "venv" / "lib"), where.stdout
    assert importlib.metadata.version("onnxruntime") == version  # this environment's own is untouched
    assert "the project is not installed in" in done.stdout
    assert f"running it from source (PYTHONPATH={REPO_ROOT}/server:{REPO_ROOT}/client:" in done.stdout
    data = json.loads((out / "gpu.json").read_text())
    assert data["onnxruntime"]["install"] == {
        "distribution": "onnxruntime",
        "version": version,
        "wheelhouse": str(wheelhouse),
    }
    assert data["onnxruntime"]["providers"] == [gpu.CPU]
    assert data["onnxruntime"]["conv_relative_error"] < 1e-5
    assert data["environment"]["torch"] == importlib.metadata.version("torch")
    assert data["environment"]["project"] == "this source tree (PYTHONPATH)"
    assert data["parity"]["passed"]
    assert {r["side"] for r in data["placement"]["rows"]} == {64, 96}
    statuses = {s["name"].split(".")[0]: s["status"] for s in data["steps"]}
    assert statuses == {"1": "ok", "2": "ok", "3": "ok", "4": "ok", "5": "skipped: --quick", "6": "ok"}
    assert all(isinstance(s["seconds"], int) for s in data["steps"])
    assert "throughput" not in data
    assert _digest(REPO_ROOT / "BENCHMARKS.md") == benchmarks
    assert sorted(path.name for path in out.iterdir()) == ["gpu.json", "gpu.md"]


def _captured() -> dict[str, object]:
    return {"capture_output": True, "text": True, "check": True}


# An onnxruntime-gpu that installs and imports, lists the CUDA provider, and then creates CPU sessions, as
# onnxruntime does when its CUDA or cuDNN libraries cannot load: what the old provider-list assertion let through.
_BROKEN = f'''"""A fake onnxruntime-gpu whose CUDA libraries cannot load (tests/bench/test_gpu_dry_run.py)."""
import sys

__version__ = "{PIN}"


def get_available_providers():
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def preload_dlls(*args, **kwargs):
    print("fake onnxruntime-gpu: libcudnn.so.9: cannot open shared object file", file=sys.stderr)


class InferenceSession:
    def __init__(self, model, sess_options=None, providers=(), **kwargs):
        self._providers = [p for p in providers if p == "CPUExecutionProvider"]

    def get_providers(self):
        return self._providers
'''


def _broken_wheel(wheelhouse: Path) -> Path:
    wheelhouse.mkdir()
    info = f"onnxruntime_gpu-{PIN}.dist-info"
    path = wheelhouse / f"onnxruntime_gpu-{PIN}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("onnxruntime/__init__.py", _BROKEN)
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: {PIN}\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


@pytest.mark.slow  # a virtualenv
def test_a_broken_onnxruntime_gpu_fails_step_1_and_skips_the_rest(tmp_path: Path) -> None:
    """The install succeeds, the smoke test finds the session on the CPU and says why; nothing after it runs (so
    the run ends in seconds, not at a timeout), each step says it was skipped, and the exit status is 1."""
    wheelhouse = tmp_path / "wheelhouse"
    _broken_wheel(wheelhouse)
    python = _throwaway_venv(tmp_path / "venv")
    out = tmp_path / "out"
    done = _gpu_sh(python, "--quick", "--wheelhouse", str(wheelhouse), "--out", str(out), timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"Successfully installed onnxruntime-gpu-{PIN}" in done.stdout, done.stdout
    assert (
        f"CUDA did not start: onnxruntime-gpu {PIN} lists ['CUDAExecutionProvider', 'CPUExecutionProvider'], "
        "but the session got ['CPUExecutionProvider']"
    ) in done.stderr
    assert "a CUDA 13 build: it needs CUDA 13 and cuDNN 9 libraries and an NVIDIA driver 580 or later" in done.stderr
    data = json.loads((out / "gpu.json").read_text())
    assert data["onnxruntime"]["passed"] is False
    assert data["onnxruntime"]["device"] == "cuda"
    first, *rest = data["steps"]
    assert first["status"] == "failed (exit 1)"
    assert [s["status"] for s in rest] == ["skipped: step 1 failed"] * 3 + ["skipped: --quick", "ok"]
    assert "Smoke test on `cuda`: FAILED: CUDA did not start" in (out / "gpu.md").read_text()


@pytest.mark.slow  # a virtualenv, one size of both placements
def test_without_torch_only_the_steps_that_need_it_are_skipped(tmp_path: Path, model_dir: Path) -> None:
    """A host without the export extra, given a model exported elsewhere (--model): parity says it needs torch and
    is skipped, the placement runs at --sides, the run passes; the model given is neither exported again nor
    removed."""
    python = _throwaway_venv(tmp_path / "venv", ("torch",))
    out = tmp_path / "out"
    flags = ["--dry-run", "--quick", "--sides", "64", "--use-installed", "--model", str(model_dir), "--out", str(out)]
    done = _gpu_sh(python, *flags)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads((out / "gpu.json").read_text())
    assert data["environment"]["torch"] == "not installed"
    statuses = {s["name"].split(".")[0]: s["status"] for s in data["steps"]}
    assert statuses == {
        "1": "ok",
        "3": "skipped: needs torch (not installed: the export extra)",
        "4": "ok",
        "5": "skipped: --quick",
        "6": "ok",
    }
    assert {r["side"] for r in data["placement"]["rows"]} == {64}  # --sides
    assert (model_dir / "loss_and_grad.onnx").exists()


def test_a_step_past_its_timeout_is_stopped_recorded_and_the_run_fails(tmp_path: Path) -> None:
    """A smoke test that hangs (an interpreter that sleeps for it) is stopped after --step-timeout, recorded as
    timed out, the steps after it are skipped, the report is still written, and the exit status is 1."""
    python = tmp_path / "python"
    python.write_text(
        f'#!/usr/bin/env bash\n[[ "$*" == *"bench.gpu onnxruntime"* ]] && exec sleep 120\nexec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    done = _gpu_sh(python, "--dry-run", "--quick", "--step-timeout", "2", "--out", str(tmp_path / "out"), timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert [s["status"] for s in data["steps"]] == [
        "timed out after 2 s",
        *["skipped: step 1 failed"] * 3,
        "skipped: --quick",
        "ok",
    ]
    assert "FAILED: 1. onnxruntime smoke test on cpu" in done.stderr


def test_a_wheelhouse_without_the_wheel_changes_nothing(tmp_path: Path) -> None:
    """The wheel is looked for before onnxruntime is removed: a wrong wheelhouse leaves the environment as it was."""
    with pytest.raises(gpu.StepFailed, match=rf"no onnxruntime_gpu-{PIN}-\*\.whl there \(it holds no wheels\)"):
        gpu.install(tmp_path, "onnxruntime-gpu", PIN)
    assert importlib.metadata.version("onnxruntime")


def test_usage_errors_are_refused_before_anything_runs(tmp_path: Path) -> None:
    python = Path(sys.executable)
    done = _gpu_sh(python, "--wheelhouse", str(tmp_path), "--use-installed", timeout=60)
    assert done.returncode == 2
    assert "give one" in done.stderr
    done = _gpu_sh(python, "--dry-run", "--benchmarks", timeout=60)
    assert (done.returncode, "never writes BENCHMARKS.md" in done.stderr) == (2, True)
    done = _gpu_sh(python, "--wheelhouse", str(tmp_path / "missing"), timeout=60)
    assert (done.returncode, "no such directory" in done.stderr) == (2, True)


@pytest.mark.parametrize(
    ("version", "expected"),
    [("1.22.0", (12, "525")), ("1.26.1", (12, "525")), ("1.27.0", (13, "580")), (PIN, (13, "580")), ("1.21", None)],
)
def test_which_cuda_each_onnxruntime_gpu_needs(version: str, expected: tuple[int, str] | None) -> None:
    assert gpu.cuda_build(version) == expected


def test_library_versions_are_decoded() -> None:
    assert gpu.cuda_version(13000) == "13.0"
    assert gpu.cuda_version(12080) == "12.8"
    assert gpu.cudnn_version(91300) == "9.13.0"
    assert gpu.cudnn_version(8906) == "8.9.6"


def test_the_loaded_cuda_libraries_are_found_in_the_maps() -> None:
    maps = "\n".join(
        [
            "7f00-7f10 r-xp 00000000 08:01 1 /env/nvidia/cu13/lib/libcudart.so.13",
            "7f10-7f20 r-xp 00000000 08:01 2 /env/nvidia/cudnn/lib/libcudnn_ops.so.9",
            "7f20-7f30 r-xp 00000000 08:01 3 /env/nvidia/cudnn/lib/libcudnn.so.9",
            "7f30-7f40 rw-p 00000000 00:00 0",
        ]
    )
    assert gpu.loaded_libraries(maps) == {
        "cudart": "/env/nvidia/cu13/lib/libcudart.so.13",
        "cudnn": "/env/nvidia/cudnn/lib/libcudnn.so.9",
    }


def test_cuda_settings_are_parsed() -> None:
    assert gpu.cuda_settings("off:exhaustive,on:heuristic") == [("off", "exhaustive"), ("on", "heuristic")]
    with pytest.raises(argparse.ArgumentTypeError, match="TF32:SEARCH"):
        gpu.cuda_settings("yes:exhaustive")


def test_needs_names_the_missing_modules_and_their_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(gpu.NEEDS, "export", ("torch", "no_such_module_here"))
    assert gpu.missing("export") == ["no_such_module_here"]
    assert gpu.main(["needs", "placement"]) == 0


def test_the_report_compares_tf32_on_with_off() -> None:
    row = {"side": 512, "optimizer": "lbfgs", "placement": "device", "conv_search": "exhaustive"}
    rows = [row | {"tf32": "off", "loss": 2.0, "loss_ms": 10.0}, row | {"tf32": "on", "loss": 2.002, "loss_ms": 4.0}]
    assert gpu.tf32_effect(rows) == ["- 512 px, lbfgs: loss with TF32 on / off 1.0010, ms per evaluation on / off 0.40"]


def test_report_goes_between_the_markers(tmp_path: Path) -> None:
    """`report --benchmarks` replaces only what lies between the markers, and says a GPU run is one."""
    data = {
        "machine": "GPU test",
        "parity": {"device": "cuda", "passed": True, "report": "gradient 1e-06", "tf32_on": "gradient 1e-3"},
    }
    (tmp_path / "gpu.json").write_text(json.dumps(data))
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text(f"# B\n\nbefore\n{gpu.BEGIN}\nold\n{gpu.END}\nafter\n")
    argv = ["report", "--json", str(tmp_path / "gpu.json"), "--markdown", str(tmp_path / "gpu.md")]
    gpu.main([*argv, "--benchmarks", str(benchmarks)])
    text = benchmarks.read_text()
    assert "old" not in text
    assert text.startswith("# B\n\nbefore\n")
    assert text.endswith(f"{gpu.END}\nafter\n")
    assert "Measured on a GPU by `bash bench/gpu.sh`." in text
    assert "Parity with PyTorch on `cuda`, TF32 off: passed (gradient 1e-06); TF32 on: gradient 1e-3" in text
