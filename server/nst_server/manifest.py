"""What an exported model directory holds: the contract between `nst-export` and the server.

The manifest travels inside both ONNX files as the metadata entry ``nst.manifest`` (JSON), so a model
directory cannot be separated from the description of how it was made. This module imports neither torch
nor onnxruntime: the exporter writes it and the server reads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

FORMAT_VERSION = 2  # 2: guide masks as inputs of both graphs, and the circular-padding variant
METADATA_KEY = "nst.manifest"
TARGETS_FILE = "targets.onnx"
LOSS_FILE = "loss_and_grad.onnx"
# The same graphs with circular instead of zero padding in every convolution (and a wrapping L_tv): tileable output.
CIRCULAR_TARGETS_FILE = "targets_circular.onnx"
CIRCULAR_LOSS_FILE = "loss_and_grad_circular.onnx"

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


# The terms are means (see the export issue's formula), so for ImageNet-normalised inputs these are the
# balance of PyTorch's neural-style tutorial, which uses the same normalisation. Caffe weights see inputs
# about 58x larger (0-255 without the std division); features scale with it, content loss by 58^2 and
# style loss by 58^4, so its defaults are rescaled to give the same balance.
_CAFFE_SCALE = 255.0 * 0.226
DEFAULT_LOSS_WEIGHTS: dict[str, LossWeights] = {
    "imagenet": LossWeights(content=1.0, style=1e6, tv=10.0),
    "caffe": LossWeights(content=_CAFFE_SCALE**-2, style=1e6 * _CAFFE_SCALE**-4, tv=10.0),
}


@dataclass(frozen=True, slots=True)
class Manifest:
    """How a model directory was exported; the server describes itself from this."""

    weights: str  # "imagenet", "caffe", "random" or the file name of a local state dict
    weights_sha256: str  # of the exported float32 weights, in layer order
    pooling: Pooling
    preprocessing: Preprocessing
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    opset: int
    exporter: str  # package and library versions that wrote the graphs
    seed: int | None = None  # only for random weights
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
        """Parse a metadata entry; raises ValueError on anything that is not this format."""
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported model format {data.get('format_version')!r}, expected {FORMAT_VERSION}")
        data["content_layers"] = tuple(data["content_layers"])
        data["style_layers"] = tuple(data["style_layers"])
        return cls(**data)
