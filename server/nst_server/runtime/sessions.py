"""onnxruntime sessions as the server opens them: providers, session options, and the evaluator bound to one.

Arrays follow one convention everywhere in the server: float32, NCHW, batch 1, RGB in [0, 1].
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from nst import manifest as mf

from ..config import CudaSettings, Device
from ..domain.evaluation import Evaluation, FloatArray

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


class DeviceUnavailableError(RuntimeError):
    """The requested device cannot be used on this machine."""


def choose_providers(device: Device, available: list[str]) -> list[str]:
    """Execution providers to ask for, best first, given what this onnxruntime build offers."""
    if device == "cpu":
        return [CPU_PROVIDER]
    if CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if device == "cuda":
        raise DeviceUnavailableError(
            "--device cuda, but this onnxruntime has no CUDA execution provider (install the gpu extra: "
            "onnxruntime-gpu instead of onnxruntime)"
        )
    return [CPU_PROVIDER]


def cuda_provider_options(cuda: CudaSettings) -> dict[str, str]:
    """The CUDA provider's options for ``cuda``, in onnxruntime's names and string values."""
    return {"use_tf32": "1" if cuda.tf32 else "0", "cudnn_conv_algo_search": cuda.conv_search.upper()}


def provider_options(providers: list[str], cuda: CudaSettings) -> list[dict[str, str]]:
    """InferenceSession's ``provider_options`` for ``providers``: the CUDA provider's from ``cuda``, none for CPU."""
    return [cuda_provider_options(cuda) if provider == CUDA_PROVIDER else {} for provider in providers]


def device_of(session_providers: list[str], requested: Device) -> str:
    """The device a created session really runs on.

    onnxruntime-gpu lists the CUDA provider even where no GPU or CUDA library exists, and then quietly
    creates a CPU-only session, so the answer comes from the session, not from the build.
    """
    if session_providers and session_providers[0] == CUDA_PROVIDER:
        return "cuda:0"
    if requested == "cuda":
        raise DeviceUnavailableError("--device cuda, but onnxruntime could not start CUDA (no GPU or driver?)")
    return "cpu"


_arena_lock = threading.Lock()
_arena_registered = False


def _register_shared_cpu_arena() -> None:
    """Register, once per process, the CPU arena that sessions created with use_env_allocators share."""
    global _arena_registered
    with _arena_lock:
        if not _arena_registered:
            memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(memory, ort.OrtArenaCfg({"arena_extend_strategy": 1}))  # SameAsRequested
            _arena_registered = True


def session_options(threads: int) -> ort.SessionOptions:
    """What every session of the server runs with; the comments say why each differs from the default."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    # Idle pool threads would otherwise spin after each run, taking the cores the host optimiser needs
    # between runs (its step took 4x as long at 512 px); the runs' own ops are too large to notice.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The memory pattern plans one block per input shape and keeps it: at 512 px it raised the peak from
    # about 1.06 GB to 1.6 GB for no measurable speed, and every new size would add another.
    options.enable_mem_pattern = False
    # One arena for every session in the process, grown only by what is asked for: the targets run's memory
    # is reused by the loss runs, and release_memory() can hand it all back (512 px peak 1.07 -> 0.89 GB).
    _register_shared_cpu_arena()
    options.add_session_config_entry("session.use_env_allocators", "1")
    return options


class SessionEvaluator:
    """Loss and gradient at one image size for one job's targets, bound once (a ``model.Evaluator``).

    Targets and weights are bound at construction; each call only copies the image in and runs. Outputs
    land in buffers allocated here once, in host memory, so on CUDA the targets stay on the device while
    the gradient comes back to the host optimiser without an extra allocation.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        device: str,
        shape: tuple[int, int],
        feeds: dict[str, FloatArray],
    ) -> None:
        self._session = session
        self._binding = session.io_binding()
        device_type, device_id = ("cuda", 0) if device.startswith("cuda") else ("cpu", 0)
        height, width = shape
        self._image = np.zeros((1, 3, height, width), np.float32)
        self._image_value = ort.OrtValue.ortvalue_from_numpy(self._image, device_type, device_id)
        self._binding.bind_ortvalue_input(mf.IMAGE_INPUT, self._image_value)
        self._on_device = device_type != "cpu"
        self.device = device
        # Everything but the image, on the device; the OrtValues must outlive the bindings that use them.
        self.feeds: dict[str, ort.OrtValue] = {}
        for name, array in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array, np.float32), device_type, device_id)
            self.feeds[name] = value
            self._binding.bind_ortvalue_input(name, value)
        self._outputs = {name: np.zeros((), np.float32) for name in mf.LOSS_OUTPUTS[:-1]}
        self._outputs["grad"] = np.zeros_like(self._image)
        for name, buffer in self._outputs.items():
            self._binding.bind_output(name, "cpu", 0, np.float32, list(buffer.shape), buffer.ctypes.data)
        self.seconds = 0.0  # spent in calls so far: what the host adds around them is the rest of a job's time

    @property
    def session(self) -> ort.InferenceSession:
        return self._session

    @property
    def shape(self) -> tuple[int, int, int, int]:
        batch, channels, height, width = self._image.shape
        return batch, channels, height, width

    def __call__(self, image: npt.NDArray[np.floating]) -> Evaluation:
        """Evaluate at ``image`` (any float dtype, any shape with the same number of elements)."""
        start = time.perf_counter()
        np.copyto(self._image, image.reshape(self._image.shape), casting="same_kind")
        if self._on_device:
            self._image_value.update_inplace(self._image)
        self._session.run_with_iobinding(self._binding)
        self.seconds += time.perf_counter() - start
        out = self._outputs
        return Evaluation(
            float(out["loss"]), float(out["content_loss"]), float(out["style_loss"]), float(out["tv_loss"]), out["grad"]
        )


def check_readable(path: Path, runtime_version: str = ort.__version__) -> mf.ModelHeader:
    """Refuse, with the reason, a model file this onnxruntime is too old for, before onnxruntime parses it.

    Raises:
        OSError: the file cannot be read.
        ValueError: not an ONNX file, or its metadata asks for a newer onnxruntime than ``runtime_version``.
    """
    header = mf.read_model_header(path)
    needed = header.metadata.get(mf.MIN_ONNXRUNTIME_KEY)
    if needed is not None and mf.release(runtime_version) < mf.release(needed):
        raise ValueError(
            f"{path} needs onnxruntime >= {needed} ({header.describe()}) and this server has onnxruntime "
            f"{runtime_version}: install a newer onnxruntime, or export the model again with this nst-export"
        )
    return header


def open_session(
    path: Path, options: ort.SessionOptions, providers: list[str], options_by_provider: list[dict[str, str]]
) -> ort.InferenceSession:
    """An InferenceSession of ``path``, after ``check_readable``; onnxruntime's own refusal says what the file is."""
    header = check_readable(path)
    try:
        return ort.InferenceSession(str(path), options, providers=providers, provider_options=options_by_provider)
    except Exception as error:  # onnxruntime's load errors have their own types (Fail, InvalidGraph, ...)
        if "IR version" not in str(error) and "opset" not in str(error).lower():
            raise
        raise ValueError(
            f"{path} ({header.describe()}) cannot be loaded by onnxruntime {ort.__version__}: {error}; "
            "export the model again with this nst-export"
        ) from error
