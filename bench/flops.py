"""The arithmetic one evaluation needs, counted from VGG19's layer table (2 flops per multiply-add)."""

from __future__ import annotations

from nst_export.vgg import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, deepest_layer, layers_up_to


def evaluation_flops(
    height: int,
    width: int,
    style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS,
    content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS,
) -> float:
    """Each 3x3 convolution forward and its input gradient, and each style layer's Gram matrix and its
    gradient; the element-wise rest is left out (it is memory-bound, not arithmetic)."""
    flops = 0.0
    for layer in layers_up_to(deepest_layer(content_layers + style_layers)):
        if layer.kind == "conv":
            flops += 2 * (2 * 9 * layer.in_channels * layer.out_channels * height * width)
        elif layer.kind == "pool":
            height, width = height // 2, width // 2
        if layer.name in style_layers:
            flops += 2 * (2 * layer.out_channels**2 * height * width)
    return flops
