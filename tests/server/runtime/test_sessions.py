"""Device choice and the evaluator: which execution provider runs, decided from what the session really got."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from nst_server.app import load_models
from nst_server.config import ServerConfig
from nst_server.runtime.graphs import LossGraphs
from nst_server.runtime.sessions import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    DeviceUnavailableError,
    choose_providers,
    device_of,
)

# What onnxruntime-gpu lists on any machine, GPU or not; plain onnxruntime lists only the CPU provider.
GPU_BUILD = [CUDA_PROVIDER, CPU_PROVIDER]
CPU_BUILD = [CPU_PROVIDER]


class TestChooseProviders:
    def test_cpu_never_asks_for_cuda(self) -> None:
        """--device cpu asks for the CPU provider alone, even on a GPU build."""
        assert choose_providers("cpu", GPU_BUILD) == [CPU_PROVIDER]

    @pytest.mark.parametrize("device", ["auto", "cuda"])
    def test_gpu_build_asks_for_cuda_first(self, device: str) -> None:
        """auto and cuda ask for CUDA first, with the CPU provider behind it for unsupported nodes."""
        assert choose_providers(device, GPU_BUILD) == [CUDA_PROVIDER, CPU_PROVIDER]  # type: ignore[arg-type]

    def test_auto_on_a_cpu_build_is_cpu(self) -> None:
        """auto on plain onnxruntime quietly uses the CPU."""
        assert choose_providers("auto", CPU_BUILD) == [CPU_PROVIDER]

    def test_cuda_on_a_cpu_build_says_what_to_install(self) -> None:
        """--device cuda without onnxruntime-gpu fails at start-up and names the extra to install."""
        with pytest.raises(DeviceUnavailableError, match="onnxruntime-gpu"):
            choose_providers("cuda", CPU_BUILD)


class TestDeviceOf:
    def test_a_session_that_got_cuda_is_on_the_gpu(self) -> None:
        """A session whose first provider is CUDA runs on cuda:0."""
        assert device_of(GPU_BUILD, "auto") == "cuda:0"

    def test_a_gpu_build_without_a_gpu_falls_back_under_auto(self) -> None:
        """onnxruntime-gpu on a machine without CUDA creates a CPU session; auto reports cpu."""
        assert device_of(CPU_BUILD, "auto") == "cpu"

    def test_cuda_requested_but_not_obtained_is_an_error(self) -> None:
        """--device cuda that ended up on the CPU is refused rather than silently slow."""
        with pytest.raises(DeviceUnavailableError, match="could not start CUDA"):
            device_of(CPU_BUILD, "cuda")


def test_this_machine_runs_on_the_cpu(model_dir: Path) -> None:
    """Here (no GPU, plain onnxruntime) auto resolves to the CPU provider."""
    rv = LossGraphs(model_dir, device="auto")
    assert rv.device == "cpu"


def test_evaluator_reuses_its_buffers(model_dir: Path) -> None:
    """Each evaluation writes into the same gradient buffer: no image-sized allocation per iteration."""
    graphs = LossGraphs(model_dir, device="cpu")
    image = np.random.default_rng(0).random((1, 3, 40, 56), dtype=np.float32)
    evaluate = graphs.evaluator((40, 56), graphs.targets(image), graphs.manifest.default_loss_weights)
    first = evaluate(image)
    second = evaluate(np.clip(image + 0.1, 0, 1))
    assert first.grad is second.grad
    assert second.content > 0.0


# Runs in a fresh interpreter, as in the server's own process: in pytest's, memory that torch and earlier tests
# left to the C allocator decides how much of a freed block the system sees again, not release_memory.
_MEASURE_RELEASE = """
import json, sys
from pathlib import Path
import numpy as np
from nst_server.runtime.graphs import LossGraphs

def rss_mb():
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))

graphs = LossGraphs(Path(sys.argv[1]), device="cpu")
graphs.release_memory()
before = rss_mb()
image = np.random.default_rng(0).random((1, 3, 288, 384), dtype=np.float32)
graphs.evaluator((288, 384), graphs.targets(image), graphs.manifest.default_loss_weights)(image)
grown = rss_mb() - before
graphs.release_memory()
print(json.dumps({"grown": grown, "kept": rss_mb() - before}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
@pytest.mark.slow
def test_release_memory_hands_a_large_evaluation_back(model_dir: Path) -> None:
    """After an evaluation at a size far above the others, release_memory returns most of what it took."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE_RELEASE, str(model_dir)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    memory = json.loads(done.stdout)
    assert memory["grown"] > 100  # the activations of one 384 px evaluation are several hundred MB
    assert memory["kept"] < memory["grown"] / 4, memory


@pytest.mark.slow  # loads the model twice
def test_a_model_without_its_circular_graphs_fails_at_start(model_dir: Path, tmp_path: Path) -> None:
    """The server loads the circular-padding pair at start-up: a model directory missing one fails to load, naming
    the file, rather than serve (health SERVING) and turn every tileable job INTERNAL."""
    partial = tmp_path / "vgg19"
    partial.mkdir()
    for path in model_dir.iterdir():
        if path.name != "loss_and_grad_circular.onnx":
            (partial / path.name).symlink_to(path)
    with pytest.raises(OSError, match=r"loss_and_grad_circular\.onnx"):
        load_models(ServerConfig(model_dirs=(partial,), device="cpu", tile_px=0))
    assert load_models(ServerConfig(model_dirs=(model_dir,), device="cpu", tile_px=0))[0].name == model_dir.name
