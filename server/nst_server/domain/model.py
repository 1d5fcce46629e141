"""The loss model as the domain sees it: what ``pipeline`` and ``targets`` call, with no onnxruntime in sight.

``runtime.graphs.LossGraphs`` is the implementation (onnxruntime sessions); this protocol lets the domain name
its types without importing the runtime, so that the whole ``domain`` package loads without onnxruntime or grpc
(tests/server/test_import_boundary.py holds it to that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from nst.events import Optimizer
from nst.manifest import LossWeights, Manifest

from .evaluation import Evaluator, FloatArray, ShouldStop
from .optimise import Optimiser

# Content features and (guided) Gram matrices of the targets, keyed by the loss graph's input names.
Targets = dict[str, FloatArray]


@dataclass(frozen=True, slots=True)
class Regions:
    """Spatial control: one guide per region at the image's size, (R, H, W) in [0, 1], and a weight per region.

    Each region's Gram targets come in the loss inputs' first axis, in the same order.
    """

    guides: FloatArray
    weights: FloatArray

    @classmethod
    def everywhere(cls, shape: tuple[int, int]) -> Regions:
        """One region covering the whole image with weight 1: the plain Gatys loss."""
        return cls(np.ones((1, *shape), np.float32), np.ones(1, np.float32))


class LossModel(Protocol):
    """One loaded model: its manifest, its targets, and evaluators bound to a job's targets at a size."""

    @property
    def name(self) -> str: ...

    @property
    def device(self) -> str: ...

    @property
    def manifest(self) -> Manifest: ...

    @property
    def whole_max_side_px(self) -> int | None:
        """The longest side evaluated whole; larger images are evaluated in exact tiles. None: no tiling."""
        ...

    # targets and evaluator declare no defaults (the implementation may): the domain says every time which guide,
    # padding and regions a job has, so that none of them can be left at a default by omission.

    def targets(self, image: FloatArray, guide: FloatArray | None, circular: bool, should_stop: ShouldStop) -> Targets:
        """Content features and Gram matrices of ``image``, keyed by the loss graph's input names.

        ``guide`` (H, W) in [0, 1], or None for all of it, selects the part whose Gram matrices count; ``circular``
        pads circularly (a tileable output). Large images are computed in tiles, which check ``should_stop``
        between them.
        """
        ...

    def evaluator(
        self,
        shape: tuple[int, int],
        targets: Targets,
        loss_weights: LossWeights,
        content_layer_weights: tuple[float, ...] | None,
        style_layer_weights: tuple[float, ...] | None,
        regions: Regions | None,
        circular: bool,
        should_stop: ShouldStop,
    ) -> Evaluator:
        """An evaluator at ``shape`` (height, width) with everything but the image bound once.

        Per-layer weights left None are the defaults (``targets.layer_weights``); ``regions`` None is one region,
        everywhere. Above the model's tile size it evaluates in tiles, checking ``should_stop`` between them.
        """
        ...

    def warm_up(self, evaluator: Evaluator, image: FloatArray) -> None:
        """Evaluate once if this size is new to the process."""
        ...

    def optimiser(self, evaluator: Evaluator, optimizer: Optimizer) -> Optimiser:
        """The optimisers bound to ``evaluator``, their step and state on the host or on the model's device, where
        the model places ``optimizer``'s."""
        ...

    def release_memory(self) -> None:
        """Hand memory held for the last job back to the system."""
        ...
