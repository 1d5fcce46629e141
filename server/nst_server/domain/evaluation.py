"""One evaluation of the loss and its gradient, as the optimisers and the loss model's evaluators share it.

The array convention everywhere in the server: float32, NCHW, batch 1, RGB in [0, 1] (``FloatArray``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
# Polled between units of work (evaluations, tiles): True once the job is cancelled.
ShouldStop = Callable[[], bool]


def never_stop() -> bool:
    """The default ``ShouldStop``: nothing cancels the work."""
    return False


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One loss and gradient evaluation. ``grad`` is the evaluator's buffer: consume it before the next call."""

    loss: float
    content: float
    style: float
    tv: float
    grad: FloatArray


@runtime_checkable
class Evaluator(Protocol):
    """Loss and gradient at one image size, with one job's targets and weights bound."""

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(1, 3, height, width) of the image it evaluates."""
        ...

    @property
    def seconds(self) -> float:
        """Spent inside its calls so far."""
        ...

    def __call__(self, image: npt.NDArray[np.floating]) -> Evaluation: ...


class WrappedEvaluator:
    """Base of an evaluator built around another, ``inner``: the same image shape, and the seconds spent in it.

    A subclass defines ``__call__``, which calls ``inner``.
    """

    def __init__(self, inner: Evaluator) -> None:
        self.inner = inner

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.inner.shape

    @property
    def seconds(self) -> float:
        return self.inner.seconds
