"""The arithmetic one evaluation needs, counted from VGG19's layer table (2 flops per multiply-add)."""

from __future__ import annotations

from collections.abc import Iterator

from nst_export.vgg import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, Layer, deepest_layer, layers_up_to

_LOSS_LAYERS = DEFAULT_CONTENT_LAYERS + DEFAULT_STYLE_LAYERS


def _layers_at_size(height: int, width: int, loss_layers: tuple[str, ...]) -> Iterator[tuple[Layer, int, int]]:
    """Each exported layer with the height and width of its output."""
    for layer in layers_up_to(deepest_layer(loss_layers)):
        if layer.kind == "pool":
            height, width = height // 2, width // 2
        yield layer, height, width


def convolution_flops(height: int, width: int, loss_layers: tuple[str, ...] = _LOSS_LAYERS) -> float:
    """Each 3x3 convolution forward and its input gradient."""
    return sum(
        2 * (2 * 9 * layer.in_channels * layer.out_channels * h * w)
        for layer, h, w in _layers_at_size(height, width, loss_layers)
        if layer.kind == "conv"
    )


def evaluation_flops(
    height: int,
    width: int,
    style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS,
    content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS,
) -> float:
    """The convolutions, and each style layer's Gram matrix and its gradient; the element-wise rest is left out
    (it is memory-bound, not arithmetic)."""
    grams = sum(
        2 * (2 * layer.out_channels**2 * h * w)
        for layer, h, w in _layers_at_size(height, width, content_layers + style_layers)
        if layer.name in style_layers
    )
    return convolution_flops(height, width, content_layers + style_layers) + grams
