"""The fixed side of the loss: content features of the photo and the blended Gram matrices of the styles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .graphs import FloatArray, LossGraphs
from .manifest import content_target_name, gram_target_name


def job_targets(
    graphs: LossGraphs, content: FloatArray, styles: Sequence[FloatArray], blend: Sequence[float] | None = None
) -> dict[str, FloatArray]:
    """Loss-graph inputs for one job: F_l(p) per content layer, sum_k b_k G_l(a_k) per style layer.

    ``blend`` weights the styles (default equal); they are normalised to sum to 1.
    """
    weights = np.asarray(blend if blend is not None else [1.0] * len(styles), np.float64)
    weights = weights / weights.sum()
    manifest = graphs.manifest
    feeds = {
        name: features
        for name, features in graphs.targets(content).items()
        if name in {content_target_name(layer) for layer in manifest.content_layers}
    }
    for weight, style in zip(weights, styles, strict=True):
        grams = graphs.targets(style)
        for layer in manifest.style_layers:
            name = gram_target_name(layer)
            term = (weight * grams[name]).astype(np.float32)
            feeds[name] = term if name not in feeds else feeds[name] + term
    return feeds
