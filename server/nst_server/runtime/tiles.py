"""Exact tiled evaluation for images too large to run whole: the same loss and gradient, in bounded memory.

The export's tile graphs (see ``nst_export.onnx_graphs`` for the exactness argument, after Galerne et al.,
"Scaling Painting Style Transfer", 2023) run on one tile at a time: a tile is an inner region on the pooling grid
plus a halo of real neighbouring pixels, cut off where the image ends. One evaluation makes two passes:

1. every tile's forward graph gives its inner region's content features, F F^T sums and squared TV differences;
   summed and divided by the whole image's counts they are the loss, and the global Gram differences;
2. every tile's gradient graph, fed those differences (as K_l) and the content targets over the tile, gives the
   gradient on its inner region, which is written into one whole-image buffer.

Memory is what one tile needs (the tile side plus twice the halo), plus a few whole-image arrays: the gradient
(12 B/px) and the content targets at the content layers (32 B/px for relu4_2). Arrays follow the server's
convention: float32, NCHW, batch 1, RGB in [0, 1].
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from nst import manifest as mf

from ..domain.errors import Cancelled
from ..domain.evaluation import Evaluation, FloatArray, ShouldStop, never_stop
from ..domain.model import Targets

Box = tuple[int, int, int, int]  # top, left, bottom, right in image pixels, bottom/right exclusive


@dataclass(frozen=True, slots=True)
class Tile:
    """One tile: the region it runs on and the inner region it owns (a partition of the image)."""

    outer: Box
    inner: Box

    @property
    def inner_in_tile(self) -> npt.NDArray[np.int64]:
        """The ``inner`` input of the tile graphs: the inner region in the tile's own pixels."""
        top, left = self.outer[:2]
        return np.array([self.inner[0] - top, self.inner[1] - left, self.inner[2] - top, self.inner[3] - left])

    def crop(self, image: npt.NDArray[np.floating]) -> FloatArray:
        """The tile's pixels of a (1, 3, H, W) image, contiguous float32."""
        top, left, bottom, right = self.outer
        return np.ascontiguousarray(image[:, :, top:bottom, left:right], np.float32)


def plan(height: int, width: int, tile_px: int, halo_px: int, align_px: int) -> list[Tile]:
    """Tiles covering a ``height`` x ``width`` image: inner regions of ``tile_px`` (a multiple of ``align_px``)
    in row-major order, each with ``halo_px`` of neighbours where the image has them."""
    if tile_px < align_px or tile_px % align_px or halo_px % align_px:
        raise ValueError(f"tile size {tile_px} and halo {halo_px} must be positive multiples of {align_px} px")

    def spans(extent: int) -> list[tuple[int, int, int, int]]:
        result = []
        for start in range(0, extent, tile_px):
            end = min(start + tile_px, extent)
            result.append((max(0, start - halo_px), start, end, min(extent, end + halo_px)))
        return result

    return [
        Tile((rows[0], cols[0], rows[3], cols[3]), (rows[1], cols[1], rows[2], cols[2]))
        for rows in spans(height)
        for cols in spans(width)
    ]


def _strides(manifest: mf.Manifest) -> dict[str, int]:
    """Pixels per feature position at each loss layer: 2 ** (poolings before it)."""
    return {name: 2 ** (int(name[4]) - 1) for name in (*manifest.content_layers, *manifest.style_layers)}


def _positions(height: int, width: int, stride: int) -> int:
    """Feature positions of a layer with ``stride`` over the whole image (floor-mode pooling)."""
    return (height // stride) * (width // stride)


def _inner_slice(tile: Tile, stride: int) -> tuple[slice, slice]:
    top, left, bottom, right = tile.inner
    return slice(top // stride, bottom // stride), slice(left // stride, right // stride)


@dataclass(frozen=True, slots=True)
class TileGraphs:
    """The two tile sessions of a model, and its tile geometry."""

    forward: ort.InferenceSession
    grad: ort.InferenceSession
    manifest: mf.Manifest
    tile_px: int

    @property
    def halo_px(self) -> int:
        assert self.manifest.tile_halo_px is not None
        return self.manifest.tile_halo_px

    @property
    def align_px(self) -> int:
        assert self.manifest.tile_align_px is not None
        return self.manifest.tile_align_px

    @property
    def whole_max_side_px(self) -> int:
        """The longest side evaluated whole: one tile with its halo on both sides. Such an image costs no more memory
        than a tile's gradient run, and tiling it would only add the halos' arithmetic (4x at 512x384 with 256 px
        tiles), so tiling starts above it."""
        return self.tile_px + 2 * self.halo_px

    def plan(self, height: int, width: int) -> list[Tile]:
        return plan(height, width, self.tile_px, self.halo_px, self.align_px)

    def forward_tiles(
        self, image: npt.NDArray[np.floating], should_stop: ShouldStop = never_stop
    ) -> Iterator[tuple[Tile, dict[str, FloatArray]]]:
        """Each tile of ``image`` with its forward graph's outputs."""
        height, width = image.shape[2:]
        names = [output.name for output in self.forward.get_outputs()]
        for tile in self.plan(height, width):
            if should_stop():
                raise Cancelled("job cancelled")
            feeds = {mf.IMAGE_INPUT: tile.crop(image), mf.TILE_INNER_INPUT: tile.inner_in_tile}
            yield tile, dict(zip(names, self.forward.run(names, feeds), strict=True))

    def targets(self, image: FloatArray, should_stop: ShouldStop = never_stop) -> Targets:
        """What the targets graph gives for ``image``, tile by tile: content features and Gram matrices."""
        height, width = image.shape[2:]
        strides = _strides(self.manifest)
        content: Targets = {}
        sums: dict[str, npt.NDArray[np.float64]] = {}
        for tile, out in self.forward_tiles(image, should_stop):
            for layer in self.manifest.content_layers:
                features = out[mf.tile_content_name(layer)]
                if layer not in content:
                    stride = strides[layer]
                    content[layer] = np.zeros((1, features.shape[1], height // stride, width // stride), np.float32)
                content[layer][(0, slice(None), *_inner_slice(tile, strides[layer]))] = features[0]
            for layer in self.manifest.style_layers:
                part = out[mf.tile_gram_sum_name(layer)].astype(np.float64)
                sums[layer] = part if layer not in sums else sums[layer] + part
        result = {mf.content_target_name(layer): value for layer, value in content.items()}
        for layer, total in sums.items():
            count = total.shape[0] * _positions(height, width, strides[layer])
            result[mf.gram_target_name(layer)] = (total / count).astype(np.float32)
        return result


class TiledEvaluator:
    """The ``Evaluator`` contract (call with an image, get loss, terms and gradient) over tiles.

    ``should_stop`` is checked between tiles, so a cancelled job stops within one tile rather than one evaluation.
    """

    def __init__(
        self,
        graphs: TileGraphs,
        shape: tuple[int, int],
        targets: Targets,
        loss_weights: mf.LossWeights,
        content_layer_weights: tuple[float, ...],
        style_layer_weights: tuple[float, ...],
        should_stop: ShouldStop = never_stop,
    ) -> None:
        self._graphs = graphs
        manifest = graphs.manifest
        height, width = shape
        self._shape = (1, 3, height, width)
        self._tiles = graphs.plan(height, width)
        self._strides = _strides(manifest)
        self._content = {layer: targets[mf.content_target_name(layer)] for layer in manifest.content_layers}
        # Gram targets come as (N, N), or as one region's (1, N, N).
        self._grams = {
            layer: targets[mf.gram_target_name(layer)].reshape(-1, targets[mf.gram_target_name(layer)].shape[-1])
            for layer in manifest.style_layers
        }
        self._grams = {layer: gram.astype(np.float64) for layer, gram in self._grams.items()}
        self._weights = loss_weights
        self._content_layer_weights = content_layer_weights
        self._style_layer_weights = style_layer_weights
        self._should_stop = should_stop
        self._grad = np.zeros(self._shape, np.float32)
        self._grad_names = [mf.TILE_GRAD_OUTPUT]
        self.seconds = 0.0

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self._shape

    @property
    def tiles(self) -> int:
        """How many tiles one evaluation runs (each twice: forward, then gradient)."""
        return len(self._tiles)

    def _check(self) -> None:
        if self._should_stop():
            raise Cancelled("job cancelled")

    def __call__(self, image: npt.NDArray[np.floating]) -> Evaluation:
        """Evaluate at ``image`` (any float dtype, any shape with the same number of elements)."""
        start = time.perf_counter()
        image = image.reshape(self._shape)
        height, width = self._shape[2:]
        manifest = self._graphs.manifest
        weights = self._weights
        # Pass 1: partial sums over each tile's inner region.
        content_sums = dict.fromkeys(manifest.content_layers, 0.0)
        gram_sums: dict[str, npt.NDArray[np.float64]] = {}
        tv_sums = np.zeros(2)
        for tile, out in self._graphs.forward_tiles(image, self._should_stop):
            for layer in manifest.content_layers:
                target = self._content[layer][(0, slice(None), *_inner_slice(tile, self._strides[layer]))]
                diff = out[mf.tile_content_name(layer)][0] - target
                content_sums[layer] += float(np.vdot(diff, diff))
            for layer in manifest.style_layers:
                part = out[mf.tile_gram_sum_name(layer)].astype(np.float64)
                gram_sums[layer] = part if layer not in gram_sums else gram_sums[layer] + part
            tv_sums += out[mf.TILE_TV_SUMS_OUTPUT]
        # The loss, with the whole image's counts; and what the gradient pass needs of it.
        content_loss = 0.0
        content_scales = np.zeros(len(manifest.content_layers), np.float32)
        for index, layer in enumerate(manifest.content_layers):
            count = self._content[layer].shape[1] * _positions(height, width, self._strides[layer])
            content_loss += self._content_layer_weights[index] * content_sums[layer] / count
            content_scales[index] = 2.0 * weights.content * self._content_layer_weights[index] / count
        style_loss = 0.0
        style_matrices: dict[str, FloatArray] = {}
        for index, layer in enumerate(manifest.style_layers):
            channels = self._grams[layer].shape[0]
            count = channels * _positions(height, width, self._strides[layer])
            diff = gram_sums[layer] / count - self._grams[layer]
            style_loss += self._style_layer_weights[index] * float(np.mean(diff * diff))
            scale = 2.0 * weights.style * self._style_layer_weights[index] / (channels**2 * count)
            style_matrices[mf.style_grad_matrix_name(layer)] = (scale * (diff + diff.T)).astype(np.float32)
        tv_counts = np.array([3 * (height - 1) * width, 3 * height * (width - 1)], np.float64)
        tv_loss = float(np.sum(tv_sums / tv_counts))
        tv_scales = (2.0 * weights.tv / tv_counts).astype(np.float32)
        # Pass 2: each tile's share of the gradient, on its inner region.
        for tile in self._tiles:
            self._check()
            feeds: dict[str, npt.NDArray[np.generic]] = {
                mf.IMAGE_INPUT: tile.crop(image),
                mf.TILE_INNER_INPUT: tile.inner_in_tile,
                mf.TILE_CONTENT_SCALES_INPUT: content_scales,
                mf.TILE_TV_SCALES_INPUT: tv_scales,
                **style_matrices,
            }
            top, left, bottom, right = tile.outer
            for layer, target in self._content.items():
                stride = self._strides[layer]
                rows = slice(top // stride, top // stride + (bottom - top) // stride)
                cols = slice(left // stride, left // stride + (right - left) // stride)
                feeds[mf.content_target_name(layer)] = np.ascontiguousarray(target[:, :, rows, cols])
            (grad,) = self._graphs.grad.run(self._grad_names, feeds)
            top, left, bottom, right = tile.inner
            self._grad[:, :, top:bottom, left:right] = grad
        total = weights.content * content_loss + weights.style * style_loss + weights.tv * tv_loss
        self.seconds += time.perf_counter() - start
        return Evaluation(total, content_loss, style_loss, tv_loss, self._grad)
