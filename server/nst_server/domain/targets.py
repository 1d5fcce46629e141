"""The fixed side of the loss: content features of the photo and the blended Gram matrices of the styles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nst.manifest import Manifest, content_target_name, gram_target_name

from .evaluation import FloatArray, ShouldStop, never_stop
from .job import Options
from .model import LossModel, Targets


def job_targets(
    model: LossModel,
    content: FloatArray,
    styles: Sequence[FloatArray],
    blend: Sequence[float] | None = None,
    should_stop: ShouldStop = never_stop,
    *,
    source_guides: Sequence[FloatArray | None] | None = None,
    per_style: bool = False,
    circular: bool = False,
) -> Targets:
    """Loss-graph inputs for one job: F_l(p) per content layer, sum_k b_k G_l(a_k) per style layer.

    ``blend`` weights the styles (default equal); they are normalised to sum to 1. Tiled targets (large images)
    check ``should_stop`` between tiles. Spatial control (``spatial``): ``source_guides`` (one per style, None for
    the whole image) guide each style's Gram matrices to part of it; ``per_style`` gives each style's own Gram
    matrices, stacked (styles, N, N), one region each, instead of their blend. ``circular``: the circular-padding
    graph's targets, for a tileable output.
    """
    weights = np.asarray(blend if blend is not None else [1.0] * len(styles), np.float64)
    weights = weights / weights.sum()
    guides = source_guides if source_guides is not None else [None] * len(styles)
    manifest = model.manifest
    feeds = {
        name: features
        for name, features in model.targets(content, guide=None, circular=circular, should_stop=should_stop).items()
        if name in {content_target_name(layer) for layer in manifest.content_layers}
    }
    stacked: dict[str, list[FloatArray]] = {gram_target_name(layer): [] for layer in manifest.style_layers}
    for weight, style, guide in zip(weights, styles, guides, strict=True):
        grams = model.targets(style, guide, circular=circular, should_stop=should_stop)
        for layer in manifest.style_layers:
            name = gram_target_name(layer)
            if per_style:
                stacked[name].append(grams[name])
                continue
            term = (weight * grams[name]).astype(np.float32)
            feeds[name] = term if name not in feeds else feeds[name] + term
    if per_style:
        feeds |= {name: np.stack(grams).astype(np.float32) for name, grams in stacked.items()}
    return feeds


def layer_weights(
    manifest: Manifest, options: Options | None = None, has_content: bool = True, has_style: bool = True
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-layer weights for the loss graph, in the model's layer order; unused layers get 0. The one home of
    their defaults: without ``options``, 1 per content layer and equal style weights summing to 1.

    Content layers weigh 1 each (L_content sums them); style weights w_l are normalised to sum to 1 so that
    beta keeps its meaning whatever the choice. A job without a content (style) image weighs its content
    (style) layers 0, which turns that term off: texture synthesis and content reconstruction.
    """
    options = options or Options()
    chosen_content = set(options.content_layers or manifest.content_layers)
    content = tuple(1.0 if has_content and name in chosen_content else 0.0 for name in manifest.content_layers)
    chosen_style = options.style_layers or manifest.style_layers
    given = dict(zip(chosen_style, options.style_layer_weights or (1.0,) * len(chosen_style), strict=True))
    total = sum(given.values())
    style = tuple(given.get(name, 0.0) / total if has_style else 0.0 for name in manifest.style_layers)
    return content, style
