"""VGG19's convolutional layers, defined here because torchvision is not a dependency.

Module indices match torchvision's ``vgg19().features`` so that its state dicts (``features.N.weight``)
load unchanged. Layer names follow Gatys et al.: ``conv{block}_{i}``, ``relu{block}_{i}``, ``pool{block}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

LayerKind = Literal["conv", "relu", "pool"]

# Output channels per conv, "M" for a 2x2 pooling: torchvision's configuration "E".
_VGG19_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Layer:
    """One module of ``features``: its torchvision index, Gatys name and, for convs, its channel counts."""

    index: int
    name: str
    kind: LayerKind
    in_channels: int = 0
    out_channels: int = 0


def _build_layer_table() -> tuple[Layer, ...]:
    layers: list[Layer] = []
    block, conv_in_block, channels = 1, 0, 3
    for entry in _VGG19_CONFIG:
        if entry == "M":
            layers.append(Layer(len(layers), f"pool{block}", "pool", channels, channels))
            block, conv_in_block = block + 1, 0
            continue
        conv_in_block += 1
        out = int(entry)
        layers.append(Layer(len(layers), f"conv{block}_{conv_in_block}", "conv", channels, out))
        layers.append(Layer(len(layers), f"relu{block}_{conv_in_block}", "relu", out, out))
        channels = out
    return tuple(layers)


VGG19_LAYERS: tuple[Layer, ...] = _build_layer_table()
LAYER_BY_NAME: dict[str, Layer] = {layer.name: layer for layer in VGG19_LAYERS}
RELU_LAYERS: tuple[str, ...] = tuple(layer.name for layer in VGG19_LAYERS if layer.kind == "relu")
CONV_LAYERS: tuple[Layer, ...] = tuple(layer for layer in VGG19_LAYERS if layer.kind == "conv")

DEFAULT_CONTENT_LAYERS: tuple[str, ...] = ("relu4_2",)
DEFAULT_STYLE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def layers_up_to(deepest: str) -> tuple[Layer, ...]:
    """The prefix of VGG19 that ends with layer ``deepest`` (what the export keeps)."""
    return VGG19_LAYERS[: LAYER_BY_NAME[deepest].index + 1]


def deepest_layer(names: tuple[str, ...]) -> str:
    """Of several layer names, the one computed last."""
    return max(names, key=lambda name: LAYER_BY_NAME[name].index)


class VGG19Features(nn.Module):
    """VGG19 ``features`` truncated after ``deepest``, with max or average pooling."""

    def __init__(self, deepest: str = "relu5_1", pooling: Literal["max", "avg"] = "max") -> None:
        super().__init__()
        self.layers = layers_up_to(deepest)
        modules: list[nn.Module] = []
        for layer in self.layers:
            if layer.kind == "conv":
                modules.append(nn.Conv2d(layer.in_channels, layer.out_channels, kernel_size=3, padding=1))
            elif layer.kind == "relu":
                modules.append(nn.ReLU())
            elif pooling == "max":
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                modules.append(nn.AvgPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*modules)
        self.requires_grad_(False)  # a fixed feature extractor: only the image is optimised

    def forward(self, x: torch.Tensor, wanted: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Run the (already preprocessed) input and return the outputs of the ``wanted`` layers."""
        outputs: dict[str, torch.Tensor] = {}
        for layer, module in zip(self.layers, self.features, strict=True):
            x = module(x)
            if layer.name in wanted:
                outputs[layer.name] = x
        return outputs

    def conv_parameters(self) -> list[tuple[Layer, torch.Tensor, torch.Tensor]]:
        """Each conv layer with its weight and bias, in order."""
        return [
            (layer, module.weight.detach(), _bias(module).detach())
            for layer, module in zip(self.layers, self.features, strict=True)
            if isinstance(module, nn.Conv2d)
        ]


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """A VGG convolution's bias: every one has one (torch types it optional for convolutions built without)."""
    assert conv.bias is not None
    return conv.bias
