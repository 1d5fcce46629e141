"""The exported graphs in ONNX Runtime: device choice, sessions shared across jobs, IO binding per job.

Arrays follow one convention everywhere in the server: float32, NCHW, batch 1, RGB in [0, 1].
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from nst.events import Optimizer

from . import manifest as mf
from .config import CudaSettings, Device, Placement
from .errors import untiled_only
from .job import FloatArray, Options
from .model import Evaluation, Evaluator, Regions, ShouldStop, Targets, never_stop
from .optimise import HostOptimiser, Optimiser
from .targets import layer_weights

if TYPE_CHECKING:
    from .device_optimise import StepGraphs
    from .tiles import TiledEvaluator, TileGraphs

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"

# What --optimizer-placement auto picks on each device (the device string's type), per optimiser. CPU, from
# `python -m bench.placement` (BENCHMARKS.md, "Optimiser placement"; idle 2-core machine): Adam's numpy step takes
# 1.9 ms per iteration at 512 px against 3.3 ms for its step graph, so the host; L-BFGS's two are level within the
# noise (steady state at 512 px: numpy 16.1 ms, step graphs 18.6 ms; short runs: the step graphs ahead), so the
# device, whose host work is 0.76 ms against the numpy step's 15 ms of Python holding the GIL that every job in
# the process shares. CUDA: the device for both, by design (the image stays on the GPU); not measured, no GPU
# has been lent.
AUTO_PLACEMENT: dict[str, dict[str, Placement]] = {
    "cpu": {"lbfgs": "device", "adam": "host"},
    "cuda": {"lbfgs": "device", "adam": "device"},
}


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


_TINY_SIDE = 16  # the smallest image every exported layer (down to relu5_1, four poolings) still accepts
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


def _session_options(threads: int) -> ort.SessionOptions:
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


def _session(
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


class LossGraphs:
    """Both graphs of one exported model directory, loaded once and shared by every job."""

    def __init__(
        self,
        model_dir: Path,
        device: Device = "auto",
        threads: int = 0,
        profile_dir: Path | None = None,
        tile_px: int = 0,
        placement: Placement = "auto",
        cuda_graphs: bool = False,
        cuda: CudaSettings | None = None,
    ) -> None:
        """Load the graphs; with ``profile_dir``, the loss graph's runs are profiled (see ``end_profiling``).

        ``placement`` says where the optimiser's step and state live (``optimiser``); "auto" resolves here, by
        the device the sessions run on (AUTO_PLACEMENT).

        ``cuda_graphs`` captures what can be captured as CUDA graphs: the device-placed Adam step, whose buffers
        keep their addresses for a scale (``device_optimise``). Not the loss graphs yet: they have no host copy
        left (``cuda_ops``), but capturing them is not written; not L-BFGS's steps: their bindings rotate with the
        history and they hand scalars to the host each run. Ignored, with a log line, where the sessions did not
        get CUDA or the step runs on the host.

        ``cuda`` (default ``CudaSettings()``) becomes the CUDA provider's options of every session: loss, targets,
        tiles and steps.

        With ``tile_px``, images whose longer side exceeds it are evaluated exactly in tiles of that many px
        (plus halo; ``nst_server.tiles``); 0 evaluates every image whole. Raises ValueError when the model
        directory has no tile graphs (exported before tiled evaluation existed).
        """
        loss_options = _session_options(threads)
        if profile_dir is not None:  # for `python -m bench.profile`: the server never profiles
            loss_options.enable_profiling = True
            loss_options.profile_file_prefix = str(profile_dir / "loss")
        providers = choose_providers(device, ort.get_available_providers())
        options_by_provider = provider_options(providers, cuda or CudaSettings())
        if CUDA_PROVIDER in providers:
            # Load CUDA and cuDNN from the nvidia-* wheels of onnxruntime-gpu[cuda,cudnn] (the container's
            # way) before the provider needs them; libraries already on the loader's path are used otherwise.
            ort.preload_dlls()
        self.name = model_dir.name
        self._dir, self._threads, self._providers = model_dir, threads, providers
        self._provider_options = options_by_provider
        self._targets = _session(model_dir / mf.TARGETS_FILE, _session_options(threads), providers, options_by_provider)
        self._loss = _session(model_dir / mf.LOSS_FILE, loss_options, providers, options_by_provider)
        self._circular: tuple[ort.InferenceSession, ort.InferenceSession] | None = None
        self._circular_lock = threading.Lock()
        self.device = device_of(self._loss.get_providers(), device)
        auto = AUTO_PLACEMENT[self.device.split(":")[0]]
        self.placements: dict[str, Placement] = {
            optimizer: auto[optimizer] if placement == "auto" else placement for optimizer in ("lbfgs", "adam")
        }
        self._steps: StepGraphs | None = None
        self._steps_lock = threading.Lock()
        self.cuda_graphs = cuda_graphs and self.device != "cpu" and self.placements["adam"] == "device"
        if cuda_graphs and not self.cuda_graphs:
            log.warning(
                "--cuda-graphs ignored: %s",
                "the sessions run on the CPU" if self.device == "cpu" else "the optimiser steps on the host",
            )
        metadata = self._loss.get_modelmeta().custom_metadata_map
        if mf.METADATA_KEY not in metadata:
            raise ValueError(f"{model_dir / mf.LOSS_FILE}: no {mf.METADATA_KEY} metadata; not made by nst-export")
        self.manifest = mf.Manifest.from_json(metadata[mf.METADATA_KEY])
        self._warm_shapes: set[tuple[int, ...]] = set()
        self.tiles: TileGraphs | None = None
        if tile_px:
            self.tiles = self._load_tiles(model_dir, threads, providers, tile_px)
        log.info(
            "loaded model %s (%s weights, %s pooling) on %s, optimiser steps on the %s (L-BFGS), %s (Adam)",
            self.name,
            self.manifest.weights,
            self.manifest.pooling,
            self.device,
            self.placements["lbfgs"],
            self.placements["adam"],
        )

    def _step_graphs(self) -> StepGraphs:
        from .device_optimise import StepGraphs

        with self._steps_lock:
            if self._steps is None:
                options = functools.partial(_session_options, self._threads)
                self._steps = StepGraphs(options, self._providers, self.cuda_graphs, self._provider_options)
            return self._steps

    def prepare_steps(self) -> None:
        """Build the step graphs' sessions the placements need (about 0.1 s each), so that no job waits for them."""
        if "device" in self.placements.values():
            self._step_graphs().prepare(Options().lbfgs_history)

    def optimiser(self, evaluator: Evaluator, optimizer: Optimizer = Optimizer.LBFGS) -> Optimiser:
        """The optimisers bound to ``evaluator``, stepping where ``placements`` says for ``optimizer``, the one
        the job runs.

        Tiled evaluators keep the host placement: their image is cut into tiles in host memory anyway.
        """
        if not isinstance(evaluator, SessionEvaluator) or self.placements[optimizer.value] == "host":
            return HostOptimiser(evaluator)
        from .device_optimise import DeviceOptimiser

        return DeviceOptimiser(self._step_graphs(), evaluator)

    def _load_tiles(self, model_dir: Path, threads: int, providers: list[str], tile_px: int) -> TileGraphs:
        from .tiles import TileGraphs  # tiles imports this module

        files = (model_dir / mf.TILE_FORWARD_FILE, model_dir / mf.TILE_GRAD_FILE)
        align = self.manifest.tile_align_px
        if self.manifest.tile_halo_px is None or align is None or not all(path.exists() for path in files):
            raise ValueError(
                f"{model_dir}: no tile graphs (exported before tiled evaluation); export it again with this "
                "version of nst-export, or serve it with --tile-size 0 (whole images only)"
            )
        if tile_px % align:
            raise ValueError(f"--tile-size {tile_px}: must be a multiple of {align} px (the pooling grid)")
        forward, grad = (_session(path, _session_options(threads), providers, self._provider_options) for path in files)
        return TileGraphs(forward, grad, self.manifest, tile_px)

    @property
    def whole_max_side_px(self) -> int | None:
        """The longest side this model evaluates whole (TileGraphs.whole_max_side_px); None: any, it never tiles."""
        return None if self.tiles is None else self.tiles.whole_max_side_px

    def tiled(self, shape: tuple[int, int]) -> bool:
        """Whether an image of ``shape`` (height, width) is evaluated in tiles."""
        return self.whole_max_side_px is not None and max(shape) > self.whole_max_side_px

    def _refuse_tiled(self, shape: tuple[int, int], guided: bool, circular: bool) -> None:
        """Region masks and circular padding hold whole-image state the tile graphs do not take (yet): refuse."""
        if guided or circular:
            what = "masks (region guides)" if guided else "tileable (circular) output"
            raise untiled_only(what, f"working size is {shape[1]}x{shape[0]}", self.whole_max_side_px)

    def warm_up(self, evaluator: Evaluator, image: FloatArray) -> None:
        """Evaluate once if this size is new to the process: onnxruntime plans memory per shape on first run.

        Tiled evaluators are not warmed up: an evaluation is already many runs, and at their sizes a whole one.
        """
        from .tiles import TiledEvaluator

        if isinstance(evaluator, TiledEvaluator):
            return
        assert isinstance(evaluator, SessionEvaluator), "an evaluator from this model's evaluator()"
        key = (id(evaluator.session), *evaluator.shape)
        if key not in self._warm_shapes:
            evaluator(image)
            self._warm_shapes.add(key)

    def end_profiling(self) -> Path:
        """Stop profiling the loss graph (``profile_dir`` given) and return the JSON trace onnxruntime wrote."""
        return Path(self._loss.end_profiling())

    def release_memory(self) -> None:
        """Return the shared arena's free memory to the system, e.g. after a job at a large size.

        onnxruntime shrinks an arena only at the end of a run that asks for it, so this runs the cheap targets
        graph on a tiny image with that request (about 0.15 s after a 1024 px job: 2.5 GB -> 0.46 GB).
        """
        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        tiny = np.zeros((1, 3, _TINY_SIDE, _TINY_SIDE), np.float32)
        guide = np.ones((1, _TINY_SIDE, _TINY_SIDE), np.float32)
        self._targets.run(None, {mf.IMAGE_INPUT: tiny, mf.GUIDE_INPUT: guide}, options)

    def _sessions(self, circular: bool) -> tuple[ort.InferenceSession, ort.InferenceSession]:
        """(targets, loss) sessions; the circular pair is loaded on the first tileable job, not before."""
        if not circular:
            return self._targets, self._loss
        with self._circular_lock:
            if self._circular is None:
                targets, loss = (
                    _session(self._dir / name, _session_options(self._threads), self._providers, self._provider_options)
                    for name in (mf.CIRCULAR_TARGETS_FILE, mf.CIRCULAR_LOSS_FILE)
                )
                self._circular = (targets, loss)
                log.info("loaded the circular-padding graphs of %s", self.name)
            assert self._circular is not None
            return self._circular

    def targets(
        self,
        image: FloatArray,
        guide: FloatArray | None = None,
        circular: bool = False,
        should_stop: ShouldStop = never_stop,
    ) -> Targets:
        """Content features and (guided) Gram matrices of ``image``, keyed by the loss graph's input names.

        ``guide`` (H, W) in [0, 1] selects the part of the image whose Gram matrices count; default all of it.
        Above the tile size the plain targets come from the tile graphs (exact, in bounded memory).
        """
        if self.tiles is not None and self.tiled(image.shape[2:]):
            self._refuse_tiled(image.shape[2:], guide is not None, circular)
            return self.tiles.targets(image, should_stop)
        session = self._sessions(circular)[0]
        height, width = image.shape[2:]
        mask = np.ones((1, height, width), np.float32) if guide is None else guide.reshape(1, height, width)
        names = [output.name for output in session.get_outputs()]
        feeds = {mf.IMAGE_INPUT: image, mf.GUIDE_INPUT: np.ascontiguousarray(mask, np.float32)}
        return dict(zip(names, session.run(names, feeds), strict=True))

    def evaluator(
        self,
        shape: tuple[int, int],
        targets: Targets,
        loss_weights: mf.LossWeights,
        content_layer_weights: tuple[float, ...] | None = None,
        style_layer_weights: tuple[float, ...] | None = None,
        regions: Regions | None = None,
        circular: bool = False,
        should_stop: ShouldStop = never_stop,
    ) -> SessionEvaluator | TiledEvaluator:
        """An evaluator at ``shape`` (height, width) with everything but the image bound once.

        Per-layer weights left None are ``targets.layer_weights``' defaults: 1 per content layer, style layers
        equal and summing to 1. Without ``regions`` the style applies everywhere (one region); a Gram target
        given as (N, N) is that one region's. ``circular`` evaluates the circular-padding graph: a tileable image.
        Above the tile size it is a ``TiledEvaluator`` (plain loss only), which checks ``should_stop`` between tiles.
        """
        default_content, default_style = layer_weights(self.manifest)
        content_weights = content_layer_weights or default_content
        style_weights = style_layer_weights or default_style
        if self.tiles is not None and self.tiled(shape):
            from .tiles import TiledEvaluator

            self._refuse_tiled(shape, regions is not None, circular)
            return TiledEvaluator(self.tiles, shape, targets, loss_weights, content_weights, style_weights, should_stop)
        regions = regions or Regions.everywhere(shape)
        feeds = {name: array[np.newaxis] if array.ndim == 2 else array for name, array in targets.items()}
        feeds[mf.REGION_GUIDES_INPUT] = regions.guides
        feeds[mf.REGION_WEIGHTS_INPUT] = regions.weights
        feeds[mf.CONTENT_WEIGHT_INPUT] = np.array(loss_weights.content, np.float32)
        feeds[mf.STYLE_WEIGHT_INPUT] = np.array(loss_weights.style, np.float32)
        feeds[mf.TV_WEIGHT_INPUT] = np.array(loss_weights.tv, np.float32)
        feeds[mf.CONTENT_LAYER_WEIGHTS_INPUT] = np.array(content_weights, np.float32)
        feeds[mf.STYLE_LAYER_WEIGHTS_INPUT] = np.array(style_weights, np.float32)
        return SessionEvaluator(self._sessions(circular)[1], self.device, shape, feeds)
