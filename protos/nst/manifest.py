"""What an exported model directory holds: the contract between `nst-export` and the server.

The manifest travels inside both ONNX files as the metadata entry ``nst.manifest`` (JSON), so a model
directory cannot be separated from the description of how it was made. This module imports neither torch
nor onnxruntime: the exporter writes it and the server reads it.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import BinaryIO, Literal

FORMAT_VERSION = 2  # 2: guide masks as inputs of both graphs, and the circular-padding variant
METADATA_KEY = "nst.manifest"
# The oldest onnxruntime that can run the graphs, as a release ("1.22"): written by the exporter, checked by
# the server before onnxruntime parses the file, so a model it cannot read is refused with the reason.
MIN_ONNXRUNTIME_KEY = "nst.min_onnxruntime"
TARGETS_FILE = "targets.onnx"
LOSS_FILE = "loss_and_grad.onnx"
# The same graphs with circular instead of zero padding in every convolution (and a wrapping L_tv): tileable output.
CIRCULAR_TARGETS_FILE = "targets_circular.onnx"
CIRCULAR_LOSS_FILE = "loss_and_grad_circular.onnx"
# Exact tiled evaluation (large images): a tile's partial sums, and a tile's share of the image gradient.
TILE_FORWARD_FILE = "tile_forward.onnx"
TILE_GRAD_FILE = "tile_grad.onnx"

Pooling = Literal["max", "avg"]
Preprocessing = Literal["imagenet", "caffe"]

IMAGE_INPUT = "image"
CONTENT_WEIGHT_INPUT = "content_weight"
STYLE_WEIGHT_INPUT = "style_weight"
TV_WEIGHT_INPUT = "tv_weight"
CONTENT_LAYER_WEIGHTS_INPUT = "content_layer_weights"
STYLE_LAYER_WEIGHTS_INPUT = "style_layer_weights"
# Guided Gram matrices (Gatys et al. 2017, spatial control). The targets graph takes the guide of the image it
# describes, (1, H, W); the loss graph takes one guide per region, (R, H, W), with a weight per region, (R,), and
# then a Gram target per region and style layer, (R, N, N). All-ones guides with R = 1 are the plain Gatys loss.
GUIDE_INPUT = "guide"
REGION_GUIDES_INPUT = "region_guides"
REGION_WEIGHTS_INPUT = "region_weights"
LOSS_OUTPUTS = ("loss", "content_loss", "style_loss", "tv_loss", "grad")

# The tile graphs' own names. ``inner`` is (top, left, bottom, right) in the tile's pixels: the region whose
# sums (forward) or gradient (backward) the tile owns; the rest of the tile is halo.
TILE_INNER_INPUT = "inner"
TILE_TV_SUMS_OUTPUT = "tile_tv_sums"  # sum of squared vertical and horizontal differences owned by the tile
TILE_CONTENT_SCALES_INPUT = "content_grad_scales"  # per content layer: 2 alpha w_l / (N_l M_l), global M_l
TILE_TV_SCALES_INPUT = "tv_grad_scales"  # 2 gamma / (number of vertical, horizontal differences of the image)
TILE_GRAD_OUTPUT = "tile_grad"  # d(loss)/d(image) over the inner region


def tile_content_name(layer: str) -> str:
    """Tile forward output: content features of the inner region at ``layer``."""
    return f"tile_content.{layer}"


def tile_gram_sum_name(layer: str) -> str:
    """Tile forward output: sum over the inner region's positions of F F^T at ``layer`` (not normalised)."""
    return f"tile_gram_sum.{layer}"


def style_grad_matrix_name(layer: str) -> str:
    """Tile gradient input: K_l with d(beta L_s)/dF_l = K_l F_l; K_l = 2 beta w_l (D + D^T) / (N_l^3 M_l), D = G - A."""
    return f"style_grad_matrix.{layer}"


def content_target_name(layer: str) -> str:
    """Name of a content-feature output of the targets graph, and of the matching loss-graph input."""
    return f"content_target.{layer}"


def gram_target_name(layer: str) -> str:
    """Name of a Gram-matrix output of the targets graph, and of the matching loss-graph input."""
    return f"gram_target.{layer}"


@dataclass(frozen=True, slots=True)
class LossWeights:
    """alpha, beta, gamma of L = alpha*L_c + beta*L_s + gamma*L_tv."""

    content: float
    style: float
    tv: float


# The terms are means: L_c = mean((F - P)^2), L_s = sum_l w_l mean((G_l - A_l)^2) with G = F F^T / (N M), L_tv =
# mean squared neighbour differences (nst_export.reference states them and where they depart from Gatys). For
# ImageNet-normalised inputs these are the balance of PyTorch's neural-style tutorial, which uses the same terms.
# Caffe weights see inputs about 58x larger (0-255 without the std division); features scale with it, content
# loss by 58^2 and style loss by 58^4, so its defaults are rescaled to give the same balance.
_CAFFE_SCALE = 255.0 * 0.226
DEFAULT_LOSS_WEIGHTS: dict[str, LossWeights] = {
    "imagenet": LossWeights(content=1.0, style=1e6, tv=10.0),
    "caffe": LossWeights(content=_CAFFE_SCALE**-2, style=1e6 * _CAFFE_SCALE**-4, tv=10.0),
}


@dataclass(frozen=True, slots=True)
class Manifest:
    """How a model directory was exported; the server describes itself from this."""

    weights: str  # "imagenet", "caffe", "random", "ranvgg" or the file name of a local state dict
    weights_sha256: str  # of the exported float32 weights, in layer order
    pooling: Pooling
    preprocessing: Preprocessing
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    opset: int
    exporter: str  # package and library versions that wrote the graphs
    seed: int | None = None  # only for random weights ("random", "ranvgg")
    recipe: str | None = None  # how seeded weights were made, e.g. ranvgg's per-layer scales; None for loaded ones
    # Tiled evaluation: the halo around a tile's inner region and the grid tile origins sit on (px); None when
    # the export has no tile graphs (an older model directory): such a model evaluates whole images only.
    tile_halo_px: int | None = None
    tile_align_px: int | None = None
    format_version: int = FORMAT_VERSION

    @property
    def default_loss_weights(self) -> LossWeights:
        """The documented alpha, beta, gamma for this model's weights flavour."""
        return DEFAULT_LOSS_WEIGHTS[self.preprocessing]

    def to_json(self) -> str:
        """Serialise for the ONNX metadata entry."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse a metadata entry; raises ValueError on anything that is not this format.

        A key this server does not know is left out: what changes how the graphs are used bumps
        ``format_version``, so a key added within a format only describes the model (as ``recipe`` did).
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"model manifest: expected a JSON object, got {type(data).__name__}")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported model format {data.get('format_version')!r}, expected {FORMAT_VERSION}")
        known = {entry.name: entry for entry in fields(cls)}
        required = [name for name, entry in known.items() if entry.default is entry.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"model manifest: missing {', '.join(missing)}")
        values = {name: value for name, value in data.items() if name in known}
        values["content_layers"] = tuple(values["content_layers"])
        values["style_layers"] = tuple(values["style_layers"])
        return cls(**values)


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version, trailing zeros dropped: "1.31.1" -> (1, 31, 1), "1.22.0.dev1+cu12" -> (1, 22).

    Raises:
        ValueError: it does not start with a number.
    """
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    numbers = [int(part) for part in match.group().split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:  # 1.22 == 1.22.0
        numbers.pop()
    return tuple(numbers)


@dataclass(frozen=True, slots=True)
class ModelHeader:
    """The top-level fields of an ONNX file that say which runtime can read it."""

    ir_version: int
    opsets: dict[str, int] = field(default_factory=dict)  # domain ("" is the default ONNX domain) -> version
    metadata: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """E.g. "ONNX IR version 8, opset 17"."""
        opsets = ", ".join(f"opset {v}" if not d else f"{d} opset {v}" for d, v in sorted(self.opsets.items()))
        return f"ONNX IR version {self.ir_version}, {opsets or 'no opset'}"


# Field numbers of onnx.proto: ModelProto.ir_version = 1, .opset_import = 8, .metadata_props = 14;
# OperatorSetIdProto.domain = 1, .version = 2; StringStringEntryProto.key = 1, .value = 2.
_IR_VERSION, _OPSET_IMPORT, _METADATA_PROPS = 1, 8, 14
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _varint(stream: BinaryIO) -> int | None:
    value = shift = 0
    while byte := stream.read(1):
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            break
    if shift:
        raise ValueError("truncated or malformed protobuf")
    return None


def _fields(stream: BinaryIO, keep: frozenset[int]) -> list[tuple[int, int | bytes]]:
    """(field, value) of a protobuf message's varint and length-delimited fields in ``keep``; the rest skipped."""
    found: list[tuple[int, int | bytes]] = []
    while (tag := _varint(stream)) is not None:
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            value = _varint(stream)
            if value is None:
                raise ValueError("truncated protobuf")
            if number in keep:
                found.append((number, value))
        elif wire == _LENGTH:
            length = _varint(stream)
            if length is None:
                raise ValueError("truncated protobuf")
            if number in keep:
                data = stream.read(length)
                if len(data) != length:
                    raise ValueError("truncated protobuf")
                found.append((number, data))
            else:
                stream.seek(length, 1)  # the graph and its weights: never read
        elif wire in (_FIXED64, _FIXED32):
            stream.seek(8 if wire == _FIXED64 else 4, 1)
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return found


def _submessage(data: bytes) -> dict[int, int | bytes]:
    return dict(_fields(io.BytesIO(data), frozenset({1, 2})))


def read_model_header(path: Path) -> ModelHeader:
    """IR version, opsets and metadata of an ONNX file, read without onnx or onnxruntime (the graph is skipped).

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not a protobuf message with an IR version (so not an ONNX model).
    """
    with open(path, "rb") as stream:
        try:
            fields = _fields(stream, frozenset({_IR_VERSION, _OPSET_IMPORT, _METADATA_PROPS}))
        except ValueError as error:
            raise ValueError(f"{path}: not an ONNX model ({error})") from None
    ir_version: int | None = None
    opsets: dict[str, int] = {}
    metadata: dict[str, str] = {}
    try:
        for number, value in fields:
            if number == _IR_VERSION and isinstance(value, int):
                ir_version = value
            elif number == _OPSET_IMPORT and isinstance(value, bytes):
                entry = _submessage(value)
                domain, version = entry.get(1, b""), entry.get(2, 0)
                if isinstance(domain, bytes) and isinstance(version, int):
                    opsets[domain.decode()] = version
            elif number == _METADATA_PROPS and isinstance(value, bytes):
                entry = _submessage(value)
                key, text = entry.get(1, b""), entry.get(2, b"")
                if isinstance(key, bytes) and isinstance(text, bytes):
                    metadata[key.decode()] = text.decode()
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not an ONNX model ({error})") from None
    if ir_version is None:
        raise ValueError(f"{path}: not an ONNX model (no IR version)")
    return ModelHeader(ir_version, opsets, metadata)
