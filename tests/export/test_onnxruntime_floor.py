"""The exported graphs load and compute in the oldest onnxruntime builds the project allows.

All four files of a model directory (the plain and the circular-padding pair) are loaded and run.
`pyproject.toml` allows `onnxruntime>=X` (the `server` and `export` extras) and `onnxruntime-gpu>=Y` (the `gpu`
extra); the GPU image and `bench/gpu.sh --wheelhouse` install the release written in
`deploy/docker/onnxruntime-gpu.version`. Each of those oldest versions is installed into a throwaway virtualenv of
its own (cached under `.cache/onnxruntime-floor/` in the repository), which loads both graphs with the CPU provider
(the GPU wheel's CPU provider reads the same files its CUDA provider would), runs them, and must match this
environment's onnxruntime. A wheel that cannot be installed (no network, no wheel for this Python) skips with pip's
reason; anything after the install fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from nst import manifest as mf
from nst_export.onnx_graphs import MIN_ONNXRUNTIME
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "onnxruntime-floor"
# The one place the onnxruntime-gpu release of the GPU image and of `bench/gpu.sh --wheelhouse` is written.
GPU_PIN_FILE = REPO / "deploy" / "docker" / "onnxruntime-gpu.version"
GPU_PIN = GPU_PIN_FILE.read_text().strip()

# Run by each onnxruntime: both graphs on a fixed image, every output saved. Uses numpy and onnxruntime only.
SCRIPT = r"""
import sys
import numpy as np
import onnxruntime as ort

model_dir, out = sys.argv[1], sys.argv[2]
options = ort.SessionOptions()
options.intra_op_num_threads = 1
cpu = ["CPUExecutionProvider"]
rng = np.random.default_rng(0)
image = rng.random((1, 3, 40, 52), dtype=np.float32)
guide = rng.random((1, 40, 52), dtype=np.float32)  # one soft region: the guided path, not just all-ones
results = {}
for suffix in ("", "_circular"):  # the plain graphs and the circular-padding pair
    targets = ort.InferenceSession(f"{model_dir}/targets{suffix}.onnx", options, providers=cpu)
    loss = ort.InferenceSession(f"{model_dir}/loss_and_grad{suffix}.onnx", options, providers=cpu)
    names = [o.name for o in targets.get_outputs()]
    feeds = dict(zip(names, targets.run(names, {"image": image, "guide": guide})))
    results.update({f"targets{suffix}/{k}": v for k, v in feeds.items()})
    feeds["image"] = (0.8 * image + 0.1 * rng.random(image.shape, dtype=np.float32)).astype(np.float32)
    feeds["region_guides"], feeds["region_weights"] = guide, np.ones(1, np.float32)
    for arg in loss.get_inputs():
        if arg.name in feeds and feeds[arg.name].ndim + 1 == len(arg.shape):  # a Gram target per region: (1, N, N)
            feeds[arg.name] = feeds[arg.name][None]
        elif arg.name not in feeds:  # loss weights (scalars) and per-layer weights (vectors): fixed, non-trivial
            shape = [int(d) for d in arg.shape]
            feeds[arg.name] = np.full(shape, 1.0 / shape[0] if shape else 0.5, np.float32)
    names = [o.name for o in loss.get_outputs()]
    results.update({f"loss{suffix}/{k}": v for k, v in zip(names, loss.run(names, feeds))})
np.savez(out, **results)
print(ort.__version__, ort.get_device(), loss.get_providers())
"""


def _floors() -> list[tuple[str, str]]:
    """(distribution, oldest version allowed) from pyproject.toml's extras and the Dockerfile's gpu pin."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    found: set[tuple[str, str]] = set()
    for requirement in (r for group in extras.values() for r in group):
        if match := re.fullmatch(r"(onnxruntime(?:-gpu)?)>=([\d.]+)", requirement.replace(" ", "")):
            found.add((match[1], match[2]))
    found.add(("onnxruntime-gpu", GPU_PIN))
    return sorted(found)


FLOORS = _floors()


def test_the_floors_are_what_the_export_records() -> None:
    """Every onnxruntime the project allows is at least the minimum the exported metadata records, and the
    floors in pyproject.toml are that minimum exactly (so the metadata never asks for more than pip installs)."""
    assert {"onnxruntime", "onnxruntime-gpu"} <= {name for name, _ in FLOORS}
    assert all(mf.release(version) >= mf.release(MIN_ONNXRUNTIME) for _, version in FLOORS)
    assert min(mf.release(v) for name, v in FLOORS if name == "onnxruntime") == mf.release(MIN_ONNXRUNTIME)
    assert min(mf.release(v) for name, v in FLOORS if name == "onnxruntime-gpu") == mf.release(MIN_ONNXRUNTIME)


def test_the_gpu_pin_is_read_from_one_place() -> None:
    """The Dockerfile and bench/gpu.sh read the pin from its file (no version of their own), and pyproject.toml's
    gpu extra, which cannot read a file, allows it."""
    assert re.fullmatch(r"\d+\.\d+\.\d+", GPU_PIN), GPU_PIN
    dockerfile = (REPO / "Dockerfile").read_text()
    assert '"onnxruntime-gpu[cuda,cudnn]==$(cat /run/pip-inputs/onnxruntime-gpu.version)"' in dockerfile
    assert "source=deploy/docker,target=/run/pip-inputs" in dockerfile
    assert GPU_PIN not in dockerfile
    gpu_sh = (REPO / "bench" / "gpu.sh").read_text()
    assert "deploy/docker/onnxruntime-gpu.version" in gpu_sh
    assert GPU_PIN not in gpu_sh
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (floor,) = (r for r in extras["gpu"] if r.startswith("onnxruntime-gpu"))
    assert SpecifierSet(floor.removeprefix("onnxruntime-gpu")).contains(GPU_PIN), (floor, GPU_PIN)


def _venv(distribution: str, version: str) -> Path:
    """A virtualenv with exactly ``distribution==version`` (and its dependencies); made once, then reused."""
    venv = CACHE / f"{distribution}-{version}"
    python = venv / "bin" / "python"
    if (venv / ".installed").exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{distribution}=={version}"],
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        reason = (install.stderr.strip().splitlines() or ["(no output)"])[-1]
        pytest.skip(f"cannot install {distribution}=={version} here, so it is NOT tested: {reason}")
    (venv / ".installed").write_text(f"{distribution}=={version}\n")
    return python


def _run(python: Path, model_dir: Path, out: Path) -> tuple[str, dict[str, np.ndarray]]:
    done = subprocess.run(
        [str(python), "-c", SCRIPT, str(model_dir), str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    with np.load(out) as data:
        return done.stdout, dict(data)


@pytest.mark.slow  # a virtualenv per onnxruntime release
@pytest.mark.parametrize(("distribution", "version"), FLOORS, ids=[f"{n}=={v}" for n, v in FLOORS])
def test_the_oldest_onnxruntime_allowed_loads_and_runs_the_graphs(
    distribution: str, version: str, model_dir: Path, tmp_path: Path
) -> None:
    """Both graphs load in that onnxruntime (the bug: onnxruntime-gpu 1.31.1 refused IR 14) and give this
    environment's numbers: every target, the loss terms and the gradient."""
    python = _venv(distribution, version)
    stdout, old = _run(python, model_dir, tmp_path / "old.npz")
    assert stdout.startswith(f"{version}") or mf.release(stdout.split()[0]) == mf.release(version), stdout
    _, here = _run(Path(sys.executable), model_dir, tmp_path / "here.npz")
    assert old.keys() == here.keys()
    assert {"loss/loss", "loss/grad", "loss_circular/loss", "loss_circular/grad"} <= old.keys()
    for name, value in here.items():
        np.testing.assert_allclose(old[name], value, rtol=2e-4, atol=1e-6 * float(np.abs(value).max()), err_msg=name)
