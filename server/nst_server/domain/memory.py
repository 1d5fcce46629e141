"""A job's peak memory, estimated from its plan before anything is decoded: what admission by memory counts.

The estimate is an upper bound of what one job adds to the server's resident memory (its models and runtime,
measured once at start-up and kept out of the budget), built from sizes alone:

    peak = encoded request bytes
         + decoded inputs                      12 B/px: content, init image, each style at its working size
                                               (float32 RGB), masks 4 B/px, each once more at a scale's size
         + decode transient                    the largest input while Pillow decodes it: 11 B per source pixel
                                               (RGBA, its upright copy, RGB) + 3 B per working pixel (the resize)
         + colour preservation                 the styles once more (12 B/px) + 24 B/px of output (float64)
         + per-scale copies                    content and styles resized to a coarser scale: 12 B/px of each, at
                                               most half the pixels (scales are sqrt(2) or 2 apart; the last
                                               scale uses the images themselves)
         + content targets                     4 B x channels / stride² per content layer, per output pixel
         + Gram targets                        4 B x channels² per style layer, per style (region) and the blend
         + optimiser vectors                   OPTIMISER_VECTORS x 12 B/px (x, gradient, direction, trial point, ...)
         + L-BFGS pairs                        history_within(history, 3 P) x 2 x 12 B/px (optimise.history_within)
         + evaluation                          EVALUATION_BYTES_PER_PX x the largest region evaluated at once:
                                               the image itself, or one tile with its halo when it is tiled
         + encoding                            12 B/px of output: the uint8 frame, the encoded image, its response
                                               message and that message serialised (3 B/px each at most), twice
                                               when previews are on (a preview and the result both in flight)

P is the output's pixel count. EVALUATION_BYTES_PER_PX is onnxruntime's gradient run, fitted to whole-image jobs
(`python -m bench.large`, BENCHMARKS.md "Large images": 1024x768 3.37 GB and 2048x1536 11.89 GB peak, i.e. 0.55 GB
+ 3.6 GB per megapixel); a 256 px tile's run (576² px) measured 0.87 GB above the loaded model, 2.6 GB per
megapixel, so the one coefficient bounds both. Checked against the 2048x1536 tiled job (peak 2.38 GB, of which
about 0.72 GB is the loaded model): this formula gives 2.2 GB for the job, above the measured 1.66 GB.
Nothing here imports onnxruntime, grpc or protobuf: the codec builds a ``JobPlan`` from headers, and admission
counts ``peak_bytes`` of it against ``--max-memory``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nst.events import Optimizer

from .optimise import history_within

GIB = 1 << 30
EVALUATION_BYTES_PER_PX = 3600  # onnxruntime's loss-and-gradient run, per pixel evaluated at once (see above)
OPTIMISER_VECTORS = 8  # whole-image float32 RGB vectors the optimisers and the tiled evaluator hold at once
FLOAT_RGB = 12  # bytes per pixel of a float32 RGB image
FLOAT_GREY = 4  # of a float32 mask
DECODE_BYTES_PER_SOURCE_PX = 11  # RGBA as decoded, its upright copy, the RGB conversion
UINT8_RGB = 3
FLOAT64_RGB = 24
# The default --max-memory: this share of the container's memory limit (cgroup), or of the machine's memory when
# there is none. The rest is headroom for what the estimate leaves out: gRPC's buffers for requests being received,
# Python's and the allocator's slack, the kernel's page cache of the model files.
DEFAULT_MEMORY_FRACTION = 0.8
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_VGG_LAYER = re.compile(r"^(?:relu|conv)(\d)_\d+$")
_VGG_CHANNELS = (64, 128, 256, 512, 512)  # per block of VGG19's features; block b works at stride 2^(b - 1)


@dataclass(frozen=True, slots=True)
class JobPlan:
    """What a job will hold, in sizes: all ``peak_bytes`` needs, known from the request's headers alone.

    Sizes are (width, height) at the last scale: the output's, and each style's working size.
    """

    output: tuple[int, int]
    styles: tuple[tuple[int, int], ...]
    has_content: bool
    has_init_image: bool
    output_masks: int  # style masks and the content-only mask: each at the output's size
    source_masked: tuple[bool, ...]  # per style: whether it has a source mask (at the style's size)
    largest_source_px: int  # the largest input as encoded (before resizing): what its decode holds
    largest_working_px: int  # the largest input at its working size
    optimizer: Optimizer
    lbfgs_history: int
    previews: bool
    colour_preservation: bool
    content_layers: tuple[str, ...]  # every content layer the model's targets graph computes
    style_layers: tuple[str, ...]
    whole_max_side_px: int | None  # above this the model evaluates in tiles of at most this side; None: never
    request_bytes: int


def layer_shape(layer: str) -> tuple[int, int]:
    """(channels, stride) of a VGG19 feature layer by its name; an unknown name counts as the largest (64, 1)."""
    match = _VGG_LAYER.match(layer)
    if match is None or not 1 <= int(match.group(1)) <= len(_VGG_CHANNELS):
        return _VGG_CHANNELS[0], 1
    block = int(match.group(1))
    return _VGG_CHANNELS[block - 1], 2 ** (block - 1)


def content_target_bytes_per_px(layers: Sequence[str]) -> float:
    """Bytes of content targets per output pixel: float32 features at each layer's grid."""
    return sum(4 * channels / stride**2 for channels, stride in map(layer_shape, layers))


def evaluated_px(size: tuple[int, int], whole_max_side_px: int | None) -> int:
    """Pixels evaluated at once for an image of ``size``: all of it, or one tile with its halo."""
    width, height = size
    if whole_max_side_px is None or max(size) <= whole_max_side_px:
        return width * height
    return min(width, whole_max_side_px) * min(height, whole_max_side_px)


def parts(plan: JobPlan) -> dict[str, int]:
    """``peak_bytes``'s terms by name (the module's formula), for messages and tests."""
    pixels = plan.output[0] * plan.output[1]
    style_px = sum(w * h for w, h in plan.styles)
    inputs = FLOAT_RGB * (pixels * (plan.has_content + plan.has_init_image) + style_px)
    masks = (
        2
        * FLOAT_GREY
        * (
            pixels * plan.output_masks
            + sum(w * h for (w, h), masked in zip(plan.styles, plan.source_masked, strict=True) if masked)
        )
    )
    regions = max(1, plan.output_masks) + 1  # each masked style's Gram matrices, and their blend
    grams = 4 * sum(layer_shape(layer)[0] ** 2 for layer in plan.style_layers) * max(1, len(plan.styles)) * regions
    history = history_within(plan.lbfgs_history, 3 * pixels) if plan.optimizer is Optimizer.LBFGS else 0
    largest_evaluated = max(evaluated_px(size, plan.whole_max_side_px) for size in (plan.output, *plan.styles))
    return {
        "request": plan.request_bytes,
        "inputs": inputs + masks,
        "decode": DECODE_BYTES_PER_SOURCE_PX * plan.largest_source_px + UINT8_RGB * plan.largest_working_px,
        "colour": (FLOAT_RGB * style_px + FLOAT64_RGB * pixels) if plan.colour_preservation else 0,
        "scales": FLOAT_RGB * (pixels * plan.has_content + style_px) // 2,
        "targets": round(content_target_bytes_per_px(plan.content_layers) * pixels) + grams,
        "optimiser": FLOAT_RGB * pixels * (OPTIMISER_VECTORS + 2 * history),
        "evaluation": EVALUATION_BYTES_PER_PX * largest_evaluated,
        "encoding": 2 * 2 * UINT8_RGB * pixels * (2 if plan.previews else 1),
    }


def peak_bytes(plan: JobPlan) -> int:
    """The estimated peak a job adds to the server's memory (the module's formula): an upper bound by design."""
    return sum(parts(plan).values())


def parse_size(text: str) -> int:
    """``6G``, ``512M``, ``1.5GiB``, ``3000000000`` to bytes (binary multiples: 1G = 2^30).

    Raises:
        ValueError: not a size, or zero.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size; expected a number of bytes with an optional K, M, G or T suffix")
    number, unit = float(match.group(1)), match.group(2).upper()
    size = int(number * 1024 ** ("KMGT".index(unit) + 1 if unit else 0))
    if size <= 0:
        raise ValueError(f"{text!r} is not a positive size")
    return size


def format_bytes(size: float) -> str:
    """A size for messages: GiB with two decimals above 1 GiB, MiB otherwise."""
    return f"{size / GIB:.2f} GiB" if size >= GIB else f"{size / (1 << 20):.0f} MiB"


def cgroup_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory limit of this process's cgroup (v2 ``memory.max``, else v1 ``memory.limit_in_bytes``); None
    when there is none or it is unlimited."""
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        try:
            text = (root / name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 says "no limit" with a huge number, v2 with "max"
            return int(text)
    return None


def physical_memory() -> int:
    """The machine's memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_max_memory(root: Path = Path("/sys/fs/cgroup")) -> tuple[int, str]:
    """The default --max-memory and where it came from: DEFAULT_MEMORY_FRACTION of the cgroup limit, else of
    physical memory."""
    limit = cgroup_limit(root)
    if limit is not None:
        return int(limit * DEFAULT_MEMORY_FRACTION), f"{DEFAULT_MEMORY_FRACTION:.0%} of the cgroup limit"
    return int(physical_memory() * DEFAULT_MEMORY_FRACTION), f"{DEFAULT_MEMORY_FRACTION:.0%} of physical memory"


def resident_bytes(status: Path = Path("/proc/self/status")) -> int:
    """This process's resident memory (VmRSS); 0 where /proc is not available."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
