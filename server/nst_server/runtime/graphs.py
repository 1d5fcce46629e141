"""The exported graphs of one model directory in ONNX Runtime: the domain's ``LossModel``, shared by every job.

Which optimiser runs where (AUTO_PLACEMENT), whole or tiled evaluation, and the circular-padding pair.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
from nst import manifest as mf
from nst.events import Optimizer

from ..config import CudaSettings, Device, Placement
from ..domain.errors import untiled_only
from ..domain.evaluation import Evaluator, FloatArray, ShouldStop, never_stop
from ..domain.job import Options
from ..domain.model import Regions, Targets
from ..domain.optimise import HostOptimiser, Optimiser
from ..domain.targets import layer_weights
from .device_optimise import DeviceOptimiser, StepGraphs
from .sessions import (
    CUDA_PROVIDER,
    SessionEvaluator,
    choose_providers,
    device_of,
    open_session,
    provider_options,
    session_options,
)
from .tiles import TiledEvaluator, TileGraphs

log = logging.getLogger(__name__)

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


_TINY_SIDE = 16  # the smallest image every exported layer (down to relu5_1, four poolings) still accepts


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
        (plus halo; ``nst_server.runtime.tiles``); 0 evaluates every image whole. Raises ValueError when the model
        directory has no tile graphs (exported before tiled evaluation existed).
        """
        loss_options = session_options(threads)
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
        self._targets = open_session(
            model_dir / mf.TARGETS_FILE, session_options(threads), providers, options_by_provider
        )
        self._loss = open_session(model_dir / mf.LOSS_FILE, loss_options, providers, options_by_provider)
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
        with self._steps_lock:
            if self._steps is None:
                options = functools.partial(session_options, self._threads)
                self._steps = StepGraphs(options, self._providers, self.cuda_graphs, self._provider_options)
            return self._steps

    def prepare_circular(self) -> None:
        """Load the circular-padding pair now (the server does at start-up), so that a model directory missing them
        fails the start, not every tileable job later (INTERNAL while health said SERVING)."""
        self._sessions(circular=True)

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
        return DeviceOptimiser(self._step_graphs(), evaluator)

    def _load_tiles(self, model_dir: Path, threads: int, providers: list[str], tile_px: int) -> TileGraphs:
        files = (model_dir / mf.TILE_FORWARD_FILE, model_dir / mf.TILE_GRAD_FILE)
        align = self.manifest.tile_align_px
        if self.manifest.tile_halo_px is None or align is None or not all(path.exists() for path in files):
            raise ValueError(
                f"{model_dir}: no tile graphs (exported before tiled evaluation); export it again with this "
                "version of nst-export, or serve it with --tile-size 0 (whole images only)"
            )
        if tile_px % align:
            raise ValueError(f"--tile-size {tile_px}: must be a multiple of {align} px (the pooling grid)")
        forward, grad = (
            open_session(path, session_options(threads), providers, self._provider_options) for path in files
        )
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
        """(targets, loss) sessions; the circular pair is loaded by ``prepare_circular`` or on first use."""
        if not circular:
            return self._targets, self._loss
        with self._circular_lock:
            if self._circular is None:
                targets, loss = (
                    open_session(
                        self._dir / name, session_options(self._threads), self._providers, self._provider_options
                    )
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
