"""Build the two ONNX graphs from VGG19's weights: targets, and loss with its gradient.

The backward pass is written out as ordinary ONNX operators, so the server needs no autograd:
- conv (3x3, stride 1, pad 1): the input gradient is the same convolution with the kernel flipped in
  space and its in/out channels swapped; ONNX Runtime folds that weight transform once at load time.
- ReLU: the gradient passes where the output is positive (PyTorch's rule, so zeros pass nothing).
- 2x2 max pooling: the gradient of each window goes to its first maximum in row-major order, PyTorch's
  tie rule, which matters on flat images such as a gray canvas; SpaceToDepth/DepthToSpace scatter it.
  Average pooling spreads a quarter to each input by nearest upsampling. Rows and columns that
  floor-mode pooling drops get zero.
The formulations are the fast ones in onnxruntime's CPU kernels; `bench/formulations.py` times the
alternatives.
Image height and width are dynamic; batch is 1.

Spatial control (Gatys et al. 2017, "Controlling Perceptual Factors", section 4.1) uses guided Gram matrices;
the guides are graph inputs, so one export serves any number of regions (see ``_guided_gram``). The circular
variant pads every convolution by wrapping around (Slice + Concat, since Pad's ``wrap`` mode lacks CUDA kernels);
its adjoint is again a circular convolution, with the flipped kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from nst import manifest as mf
from onnx import TensorProto, helper, numpy_helper

from .reference import CAFFE_MEAN_BGR, IMAGENET_MEAN, IMAGENET_STD
from .vgg import Layer, VGG19Features, deepest_layer

OPSET = 17
# Written explicitly, never the installed onnx's newest: IR 8 is the IR of ONNX 1.12, the first release with
# opset 17, so every onnxruntime that knows the opset reads the file. Left to `make_model`, onnx 1.21 wrote
# IR 14, which onnxruntime-gpu 1.31 refuses ("max supported IR version: 13").
IR_VERSION = 8
# The oldest onnxruntime the project supports (pyproject's `onnxruntime>=` and `onnxruntime-gpu>=` floors, which
# tests/export/test_onnxruntime_floor.py loads these graphs with), stored in both files' metadata
# (manifest.MIN_ONNXRUNTIME_KEY) so that a server with an older one refuses the model with the reason.
MIN_ONNXRUNTIME = "1.22"
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min


@dataclass
class _Builder:
    """Accumulates nodes and constants with unique names."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    _constants: dict[tuple[str, bytes], str] = field(default_factory=dict)
    _count: int = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: Any) -> str:
        """Add a node and return its (first) output name."""
        return self.op_multi(op_type, *inputs, outputs=outputs, **attrs)[0]

    def op_multi(self, op_type: str, *inputs: str, outputs: int, **attrs: Any) -> list[str]:
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        """An initializer; identical small constants are shared."""
        key = (f"{value.dtype}{value.shape}", value.tobytes()) if value.size <= 16 else None
        if key is not None and key in self._constants:
            return self._constants[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        if key is not None:
            self._constants[key] = name
        return name

    def f32(self, value: float) -> str:
        return self.const(np.array(value, dtype=np.float32))

    def i64(self, *values: int) -> str:
        return self.const(np.array(values, dtype=np.int64))

    def output(self, tensor: str, name: str) -> None:
        self.nodes.append(helper.make_node("Identity", [tensor], [name], name=f"out_{name}"))


@dataclass(frozen=True, slots=True)
class _Forward:
    """Tensor names the backward pass needs from the forward pass."""

    outputs: dict[str, str]  # every layer's output, by layer name
    inputs: dict[str, str]  # every layer's input, by layer name
    conv_weights: dict[str, str]
    circular: bool = False  # every conv pads by wrapping around instead of with zeros


def _wrap_pad(b: _Builder, x: str) -> str:
    """Pad H and W by one on each side with the opposite edge: circular padding as Slice + Concat."""
    for axis in (2, 3):
        last = b.op("Slice", x, b.i64(-1), b.i64(_INT64_MAX), b.i64(axis))
        first = b.op("Slice", x, b.i64(0), b.i64(1), b.i64(axis))
        x = b.op("Concat", last, x, first, axis=axis)
    return x


def _conv(b: _Builder, x: str, weight: str, bias: str | None, circular: bool) -> str:
    """3x3 convolution, stride 1, with zero or circular padding of 1."""
    inputs = (weight,) if bias is None else (weight, bias)
    if circular:
        return b.op("Conv", _wrap_pad(b, x), *inputs, kernel_shape=[3, 3], pads=[0, 0, 0, 0])
    return b.op("Conv", x, *inputs, kernel_shape=[3, 3], pads=[1, 1, 1, 1])


def _preprocessing(flavour: mf.Preprocessing) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per-RGB-channel scale and shift, and the order of conv1_1's input channels, for each flavour.

    Caffe's BGR order is folded into conv1_1's weights (permuting input channels commutes with zero
    padding; folding the mean into the bias would not, at the borders).
    """
    if flavour == "imagenet":
        std, mean = np.array(IMAGENET_STD), np.array(IMAGENET_MEAN)
        return (1.0 / std).astype(np.float32), (-mean / std).astype(np.float32), [0, 1, 2]
    shift = -np.array(CAFFE_MEAN_BGR)[::-1]
    return np.full(3, 255.0, np.float32), shift.astype(np.float32), [2, 1, 0]


def _forward(
    b: _Builder, model: VGG19Features, pooling: mf.Pooling, flavour: mf.Preprocessing, circular: bool = False
) -> _Forward:
    scale, shift, channel_order = _preprocessing(flavour)
    x = b.op("Mul", mf.IMAGE_INPUT, b.const(scale.reshape(1, 3, 1, 1), "pre_scale"))
    x = b.op("Add", x, b.const(shift.reshape(1, 3, 1, 1), "pre_shift"))
    params = {layer.name: (w.numpy(), bias.numpy()) for layer, w, bias in model.conv_parameters()}
    outputs: dict[str, str] = {}
    inputs: dict[str, str] = {}
    conv_weights: dict[str, str] = {}
    for layer in model.layers:
        inputs[layer.name] = x
        if layer.kind == "conv":
            weight, bias = params[layer.name]
            if layer.name == "conv1_1":
                weight = weight[:, channel_order]
            w_name = b.const(np.ascontiguousarray(weight, dtype=np.float32), f"{layer.name}.weight")
            bias_name = b.const(bias.astype(np.float32), f"{layer.name}.bias")
            conv_weights[layer.name] = w_name
            x = _conv(b, x, w_name, bias_name, circular)
        elif layer.kind == "relu":
            x = b.op("Relu", x)
        else:
            pool = "MaxPool" if pooling == "max" else "AveragePool"
            x = b.op(pool, x, kernel_shape=[2, 2], strides=[2, 2])
        outputs[layer.name] = x
    return _Forward(outputs, inputs, conv_weights, circular)


def _gram(b: _Builder, features: str, channels: int) -> tuple[str, str, str]:
    """G = F F^T / (N M); also returns F as an N x M matrix and N*M as a float scalar."""
    matrix = b.op("Reshape", features, b.i64(channels, -1))
    count = _element_count(b, matrix, channels, (1,))
    product = b.op("MatMul", matrix, b.op("Transpose", matrix, perm=[1, 0]))
    return b.op("Div", product, count), matrix, count


def _layer_guides(b: _Builder, model: VGG19Features, guides: str, wanted: tuple[str, ...]) -> dict[str, str]:
    """Guides (R, H, W) at each wanted layer's grid, as (R, 1, M): averaged 2x2 wherever the network pools.

    Average pooling in floor mode gives exactly the features' grid, and keeps an all-ones guide all ones.
    """
    mask = b.op("Unsqueeze", guides, b.i64(1))
    by_layer: dict[str, str] = {}
    for layer in model.layers:
        if layer.kind == "pool":
            mask = b.op("AveragePool", mask, kernel_shape=[2, 2], strides=[2, 2])
        if layer.name in wanted:
            by_layer[layer.name] = b.op("Reshape", mask, b.i64(0, 1, -1))
    return by_layer


@dataclass(frozen=True, slots=True)
class _Gram:
    """Guided Gram matrices of one layer, (R, N, N), with what their gradient needs."""

    gram: str
    guided: str  # F_r = F * T_r, (R, N, M)
    count: str  # N * sum_m T_r[m]^2, (R, 1, 1)


def _guided_gram(b: _Builder, features: str, channels: int, guide: str) -> _Gram:
    """G_r = (F . T_r)(F . T_r)^T / (N * sum_m T_r[m]^2) for each region r.

    F is the layer's N x M feature matrix, T_r (M,) region r's guide at the layer's grid and ``.`` scales each
    column m by T_r[m] (Gatys et al. 2017, eq. for guided Gram matrices). Dividing by the guide's mass, sum of T^2
    (the region's area for a binary guide), makes G_r an average over the region like Gatys et al. 2016's
    F F^T / (N M), which it equals exactly when T_r is all ones. A guide that vanishes at this grid gives G_r = 0
    rather than 0/0.
    """
    matrix = b.op("Reshape", features, b.i64(1, channels, -1))
    guided = b.op("Mul", matrix, guide)
    mass = b.op("ReduceSum", b.op("Mul", guide, guide), b.i64(1, 2), keepdims=1)
    count = b.op("Mul", b.op("Max", mass, b.f32(1e-30)), b.f32(float(channels)))
    product = b.op("MatMul", guided, b.op("Transpose", guided, perm=[0, 2, 1]))
    return _Gram(b.op("Div", product, count), guided, count)


def _sum_of_squares(b: _Builder, values: str) -> str:
    """sum(values^2) as a float scalar, accumulated in float64.

    onnxruntime's float32 ReduceSum drifts with size: the TV term of a 1024x768 image came out 8e-5 (relative)
    off, more than the tiled evaluation's agreement is meant to be; squares and sum in float64 cost little.
    """
    wide = b.op("Cast", values, to=TensorProto.DOUBLE)
    return b.op("Cast", b.op("ReduceSum", b.op("Mul", wide, wide), keepdims=0), to=TensorProto.FLOAT)


def _element_count(b: _Builder, tensor: str, fixed: int, dynamic_axes: tuple[int, ...]) -> str:
    """How many elements ``tensor`` has, as a float32 scalar computed on the device: ``fixed`` (the product of the
    sizes known at export) times the size of each axis in ``dynamic_axes`` (height and width are dynamic).

    Cast(Size(x)) says the same in two nodes, but Size writes into host memory, so on CUDA the Cast needs a copy
    from the host each run, and onnxruntime refuses to capture a graph with such a copy as a CUDA graph
    (``nst_server.runtime.cuda_ops``). ConstantOfShape reads its shape from host memory by design (as Reshape does) and
    writes ones on the device, whose sum is the axis' size. Counted in float64, the product is exact (< 2^53) and
    is rounded to float32 once, as Cast(Size) rounds it: the same bits.
    """
    shape = b.op("Shape", tensor)
    count = b.const(np.array(float(fixed), np.float64), "count")
    one = numpy_helper.from_array(np.ones(1, np.float64))
    for axis in dynamic_axes:
        ones = b.op("ConstantOfShape", b.op("Slice", shape, b.i64(axis), b.i64(axis + 1)), value=one)
        count = b.op("Mul", count, b.op("ReduceSum", ones, keepdims=0))
    return b.op("Cast", count, to=TensorProto.FLOAT)


def _mean_square(b: _Builder, diff: str, count: str, wide: bool = False) -> str:
    """mean(diff^2) as a scalar, given ``diff``'s element count as a float scalar; ``wide``: summed in float64.

    Image-sized terms (content, TV) are summed wide; the style terms' N x N differences are small, and stay
    float32 so that the guided and plain formulations remain bit-identical.
    """
    total = _sum_of_squares(b, diff) if wide else b.op("ReduceSum", b.op("Mul", diff, diff), keepdims=0)
    return b.op("Div", total, count)


def _layer_weight(b: _Builder, weights_input: str, index: int) -> str:
    return b.op("Gather", weights_input, b.const(np.array(index, dtype=np.int64)), axis=0)


def _add(b: _Builder, total: str | None, term: str) -> str:
    return term if total is None else b.op("Add", total, term)


def _scatter_windows(b: _Builder, pieces: list[str], layer_input: str, pooled: str) -> str:
    """Inverse of splitting ``layer_input`` into 2x2 windows: place four (1,C,h,w) pieces, pad dropped edges."""
    full = b.op("DepthToSpace", b.op("Concat", *pieces, axis=1), blocksize=2, mode="DCR")
    return _pad_dropped_edges(b, full, layer_input, pooled)


def _pad_dropped_edges(b: _Builder, full: str, layer_input: str, pooled: str) -> str:
    """``full`` (twice the pooled size) padded with zeros to ``layer_input``'s size: floor-mode pooling's leftovers."""
    covered = b.op("Mul", b.op("Slice", b.op("Shape", pooled), b.i64(2), b.i64(4)), b.i64(2))
    remainder = b.op("Sub", b.op("Slice", b.op("Shape", layer_input), b.i64(2), b.i64(4)), covered)
    pads = b.op("Concat", b.i64(0, 0, 0, 0, 0, 0), remainder, axis=0)
    return b.op("Pad", full, pads)


def _masked(b: _Builder, grad: str, mask: str) -> str:
    """``grad`` where ``mask`` holds, else 0: a Mul by the cast mask, several times faster than Where on the CPU."""
    return b.op("Mul", grad, b.op("Cast", mask, to=TensorProto.FLOAT))


def _pool_backward(b: _Builder, grad: str, layer_input: str, pooled: str, pooling: mf.Pooling) -> str:
    if pooling == "avg":
        # Each input of a window gets a quarter of its gradient: nearest upsampling, much faster than DepthToSpace.
        quarter = b.op("Mul", grad, b.f32(0.25))
        spread = b.op("Resize", quarter, "", b.const(np.array([1, 1, 2, 2], np.float32), "double"), mode="nearest",
                      coordinate_transformation_mode="asymmetric", nearest_mode="floor")  # fmt: skip
        return _pad_dropped_edges(b, spread, layer_input, pooled)
    covered = b.op("Mul", b.op("Slice", b.op("Shape", pooled), b.i64(2), b.i64(4)), b.i64(2))
    cropped = b.op("Slice", layer_input, b.i64(0, 0), covered, b.i64(2, 3))
    windows = b.op_multi("Split", b.op("SpaceToDepth", cropped, blocksize=2), outputs=4, axis=1)
    pieces: list[str] = []
    taken: str | None = None
    for position, window in enumerate(windows):
        if position == 3:
            assert taken is not None  # set by the three windows before
            chosen = b.op("Not", taken)
        else:
            is_max = b.op("Equal", window, pooled)
            chosen = is_max if taken is None else b.op("And", is_max, b.op("Not", taken))
            taken = chosen if taken is None else b.op("Or", taken, chosen)
        pieces.append(_masked(b, grad, chosen))
    return _scatter_windows(b, pieces, layer_input, pooled)


def _conv_backward(b: _Builder, grad: str, weight: str, circular: bool) -> str:
    swapped = b.op("Transpose", weight, perm=[1, 0, 2, 3])
    flipped = b.op("Slice", swapped, b.i64(-1, -1), b.i64(_INT64_MIN, _INT64_MIN), b.i64(2, 3), b.i64(-1, -1))
    return _conv(b, grad, flipped, None, circular)


def _roll(b: _Builder, x: str, shift: int, axis: int) -> str:
    """``x`` rolled by +1 or -1 along ``axis``, as numpy.roll does."""
    split = -1 if shift == 1 else 1
    head = b.op("Slice", x, b.i64(0), b.i64(split), b.i64(axis))
    tail = b.op("Slice", x, b.i64(split), b.i64(_INT64_MAX), b.i64(axis))
    return b.op("Concat", tail, head, axis=axis)


def _total_variation_circular(b: _Builder, image: str) -> tuple[str, str]:
    """L_tv and its gradient on the torus: the differences across the wrap count like any others."""
    loss: str | None = None
    grad: str | None = None
    for axis in (2, 3):
        diff = b.op("Sub", _roll(b, image, -1, axis), image)  # x[i+1] - x[i], i+1 taken mod the size
        count = _element_count(b, diff, 3, (2, 3))
        loss = _add(b, loss, _mean_square(b, diff, count, wide=True))
        d_diff = b.op("Mul", diff, b.op("Div", b.f32(2.0), count))
        grad = _add(b, grad, b.op("Sub", _roll(b, d_diff, 1, axis), d_diff))
    assert loss is not None
    assert grad is not None
    return loss, grad


def _tv_differences(b: _Builder, image: str, axis: int) -> str:
    """x[i+1] - x[i] along ``axis`` (one shorter there)."""
    upper = b.op("Slice", image, b.i64(1), b.i64(_INT64_MAX), b.i64(axis))
    lower = b.op("Slice", image, b.i64(0), b.i64(-1), b.i64(axis))
    return b.op("Sub", upper, lower)


def _tv_gradient(b: _Builder, diff: str, scale: str, axis: int) -> str:
    """d(sum(diff^2) * scale / 2)/dimage: each difference pushes its two pixels apart."""
    d_diff = b.op("Mul", diff, scale)
    before, after = [0] * 8, [0] * 8
    before[axis], after[axis + 4] = 1, 1
    return b.op("Sub", b.op("Pad", d_diff, b.i64(*before)), b.op("Pad", d_diff, b.i64(*after)))


def _total_variation(b: _Builder, image: str) -> tuple[str, str]:
    """L_tv and dL_tv/dimage."""
    loss: str | None = None
    grad: str | None = None
    for axis in (2, 3):
        diff = _tv_differences(b, image, axis)
        count = _element_count(b, diff, 3, (2, 3))
        loss = _add(b, loss, _mean_square(b, diff, count, wide=True))
        grad = _add(b, grad, _tv_gradient(b, diff, b.op("Div", b.f32(2.0), count), axis))
    assert loss is not None
    assert grad is not None
    return loss, grad


def _image_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(mf.IMAGE_INPUT, TensorProto.FLOAT, [1, 3, "height", "width"])


def _feature_info(name: str, layer: Layer) -> onnx.ValueInfoProto:
    shape: list[int | str] = [1, layer.out_channels, f"{name}.height", f"{name}.width"]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _gram_info(name: str, layer: Layer) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [layer.out_channels, layer.out_channels])


def _region_gram_info(name: str, layer: Layer) -> onnx.ValueInfoProto:
    shape: list[int | str] = ["regions", layer.out_channels, layer.out_channels]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _scalar_info(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [])


def _model(
    b: _Builder,
    name: str,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    manifest: mf.Manifest,
) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, name, inputs, outputs, initializer=b.initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nst_export", ir_version=IR_VERSION
    )
    helper.set_model_props(model, {mf.METADATA_KEY: manifest.to_json(), mf.MIN_ONNXRUNTIME_KEY: MIN_ONNXRUNTIME})
    onnx.checker.check_model(model, full_check=True)
    return model


def _guide_input(name: str, regions: int | str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [regions, "height", "width"])


def build_targets_graph(
    model: VGG19Features, manifest: mf.Manifest, circular: bool = False, guided: bool = True
) -> onnx.ModelProto:
    """image and its guide -> content features at the content layers and guided Gram matrices at the style layers.

    The guide (1, H, W) selects the part of a style image that counts; all ones is the whole image.
    ``guided=False``: no guide input, plain Gram matrices (see ``build_loss_graph``).
    """
    b = _Builder()
    forward = _forward(b, model, manifest.pooling, manifest.preprocessing, circular)
    layer = {layer.name: layer for layer in model.layers}
    outputs = []
    for name in manifest.content_layers:
        b.output(forward.outputs[name], mf.content_target_name(name))
        outputs.append(_feature_info(mf.content_target_name(name), layer[name]))
    guides = _layer_guides(b, model, mf.GUIDE_INPUT, manifest.style_layers) if guided else {}
    for name in manifest.style_layers:
        channels = layer[name].out_channels
        if guided:
            gram = b.op("Squeeze", _guided_gram(b, forward.outputs[name], channels, guides[name]).gram, b.i64(0))
        else:
            gram, _, _ = _gram(b, forward.outputs[name], channels)
        b.output(gram, mf.gram_target_name(name))
        outputs.append(_gram_info(mf.gram_target_name(name), layer[name]))
    inputs = [_image_input(), _guide_input(mf.GUIDE_INPUT, 1)] if guided else [_image_input()]
    name = "nst_targets_circular" if circular else "nst_targets"
    return _model(b, name, inputs, outputs, manifest)


def _plain_style_term(b: _Builder, features: str, channels: int, target: str, scale: str) -> tuple[str, str]:
    """mean((G - A)^2) and its gradient at F, the unguided formulation (Gatys et al. 2016)."""
    gram, matrix, count = _gram(b, features, channels)
    diff = b.op("Sub", gram, target)
    term = _mean_square(b, diff, b.f32(float(channels**2)))
    # dF = scale * (D + D^T) F / (N M)
    symmetric = b.op("Add", diff, b.op("Transpose", diff, perm=[1, 0]))
    d_matrix = b.op("Mul", b.op("MatMul", symmetric, matrix), b.op("Div", scale, count))
    return term, b.op("Reshape", d_matrix, b.op("Shape", features))


def _guided_style_term(
    b: _Builder, features: str, channels: int, target: str, scale: str, guide: str, region_weights: str
) -> tuple[str, str]:
    """sum_r lambda_r mean((G_r - A_r)^2), the regions' terms of Gatys et al. 2017, and its gradient at F.

    dF_r = lambda_r * scale * (D_r + D_r^T) F_r / count_r with F_r = F . T_r, so dF = sum_r dF_r . T_r.
    With one all-ones region and lambda 1 every step is the plain term's, multiplied or divided by exactly 1.
    """
    gram = _guided_gram(b, features, channels, guide)
    diff = b.op("Sub", gram.gram, target)
    squares = b.op("Mul", region_weights, b.op("Mul", diff, diff))
    term = b.op("Div", b.op("ReduceSum", squares, keepdims=0), b.f32(float(channels**2)))
    symmetric = b.op("Add", diff, b.op("Transpose", diff, perm=[0, 2, 1]))
    coefficient = b.op("Div", b.op("Mul", scale, region_weights), gram.count)
    d_guided = b.op("Mul", b.op("MatMul", symmetric, gram.guided), coefficient)
    d_matrix = b.op("ReduceSum", b.op("Mul", d_guided, guide), b.i64(0), keepdims=0)
    return term, b.op("Reshape", d_matrix, b.op("Shape", features))


def _loss_gradients(
    b: _Builder, model: VGG19Features, forward: _Forward, manifest: mf.Manifest, guided: bool
) -> tuple[str, str, dict[str, str]]:
    """L_c and L_s (with their per-layer weights) and the gradient of alpha L_c + beta L_s at each layer."""
    layer = {layer.name: layer for layer in model.layers}
    grads: dict[str, str] = {}
    content_loss: str | None = None
    for index, name in enumerate(manifest.content_layers):
        diff = b.op("Sub", forward.outputs[name], mf.content_target_name(name))
        count = _element_count(b, diff, layer[name].out_channels, (2, 3))
        term = _mean_square(b, diff, count, wide=True)
        weight = _layer_weight(b, mf.CONTENT_LAYER_WEIGHTS_INPUT, index)
        content_loss = _add(b, content_loss, b.op("Mul", weight, term))
        # d(alpha w mean(diff^2))/dF = 2 alpha w diff / count
        coefficient = b.op("Div", b.op("Mul", b.op("Mul", weight, mf.CONTENT_WEIGHT_INPUT), b.f32(2.0)), count)
        grads[name] = _add(b, grads.get(name), b.op("Mul", diff, coefficient))
    style_loss: str | None = None
    guides = _layer_guides(b, model, mf.REGION_GUIDES_INPUT, manifest.style_layers) if guided else {}
    region_weights = b.op("Reshape", mf.REGION_WEIGHTS_INPUT, b.i64(-1, 1, 1)) if guided else ""
    for index, name in enumerate(manifest.style_layers):
        channels, features, target = layer[name].out_channels, forward.outputs[name], mf.gram_target_name(name)
        weight = _layer_weight(b, mf.STYLE_LAYER_WEIGHTS_INPUT, index)
        # The coefficient of dL/dG: d(beta w mean(D^2))/dG = 2 beta w D / N^2, D = G - A.
        scale = b.op("Mul", b.op("Mul", weight, mf.STYLE_WEIGHT_INPUT), b.f32(2.0 / channels**2))
        if guided:
            term, d_features = _guided_style_term(b, features, channels, target, scale, guides[name], region_weights)
        else:
            term, d_features = _plain_style_term(b, features, channels, target, scale)
        style_loss = _add(b, style_loss, b.op("Mul", weight, term))
        grads[name] = _add(b, grads.get(name), d_features)
    assert content_loss is not None
    assert style_loss is not None
    return content_loss, style_loss, grads


def _backward(
    b: _Builder, model: VGG19Features, forward: _Forward, layer_grads: dict[str, str], manifest: mf.Manifest
) -> str:
    """d/dimage of a loss whose gradient at each loss layer's output is ``layer_grads``, back through VGG."""
    circular = forward.circular
    grad: str | None = None
    for layer in reversed(model.layers):
        if layer.name in layer_grads:
            grad = _add(b, grad, layer_grads[layer.name])
        if grad is None:
            continue  # nothing below the deepest loss layer contributes
        if layer.kind == "relu":
            grad = _masked(b, grad, b.op("Greater", forward.outputs[layer.name], b.f32(0.0)))
        elif layer.kind == "conv":
            grad = _conv_backward(b, grad, forward.conv_weights[layer.name], circular)
        else:
            grad = _pool_backward(b, grad, forward.inputs[layer.name], forward.outputs[layer.name], manifest.pooling)
    assert grad is not None
    scale, _, _ = _preprocessing(manifest.preprocessing)
    return b.op("Mul", grad, b.const(scale.reshape(1, 3, 1, 1), "pre_scale"))


def build_loss_graph(
    model: VGG19Features, manifest: mf.Manifest, circular: bool = False, guided: bool = True
) -> onnx.ModelProto:
    """image, targets, region guides and weights -> loss, its unweighted terms, and d(loss)/d(image), in one run.

    ``guided=False`` builds the plain Gatys graph without guide inputs (Gram targets (N, N)), the formulation
    before spatial control: the tests prove the guided graph gives bit-identical results on all-ones guides.
    """
    b = _Builder()
    forward = _forward(b, model, manifest.pooling, manifest.preprocessing, circular)
    content_loss, style_loss, layer_grads = _loss_gradients(b, model, forward, manifest, guided)

    image_grad = _backward(b, model, forward, layer_grads, manifest)
    tv_loss, tv_grad = (_total_variation_circular if circular else _total_variation)(b, mf.IMAGE_INPUT)
    image_grad = b.op("Add", image_grad, b.op("Mul", tv_grad, mf.TV_WEIGHT_INPUT))

    total = b.op(
        "Add", b.op("Mul", content_loss, mf.CONTENT_WEIGHT_INPUT), b.op("Mul", style_loss, mf.STYLE_WEIGHT_INPUT)
    )
    total = b.op("Add", total, b.op("Mul", tv_loss, mf.TV_WEIGHT_INPUT))
    for tensor, name in zip((total, content_loss, style_loss, tv_loss, image_grad), mf.LOSS_OUTPUTS, strict=True):
        b.output(tensor, name)

    layer_named = {layer.name: layer for layer in model.layers}
    inputs = [
        _image_input(),
        *(_feature_info(mf.content_target_name(n), layer_named[n]) for n in manifest.content_layers),
        *(
            (_region_gram_info if guided else _gram_info)(mf.gram_target_name(n), layer_named[n])
            for n in manifest.style_layers
        ),
        *(
            [
                _guide_input(mf.REGION_GUIDES_INPUT, "regions"),
                helper.make_tensor_value_info(mf.REGION_WEIGHTS_INPUT, TensorProto.FLOAT, ["regions"]),
            ]
            if guided
            else []
        ),
        *(_scalar_info(n) for n in (mf.CONTENT_WEIGHT_INPUT, mf.STYLE_WEIGHT_INPUT, mf.TV_WEIGHT_INPUT)),
        helper.make_tensor_value_info(
            mf.CONTENT_LAYER_WEIGHTS_INPUT, TensorProto.FLOAT, [len(manifest.content_layers)]
        ),
        helper.make_tensor_value_info(mf.STYLE_LAYER_WEIGHTS_INPUT, TensorProto.FLOAT, [len(manifest.style_layers)]),
    ]
    outputs = [_scalar_info(n) for n in mf.LOSS_OUTPUTS[:-1]]
    outputs.append(helper.make_tensor_value_info("grad", TensorProto.FLOAT, [1, 3, "height", "width"]))
    return _model(b, "nst_loss_and_grad_circular" if circular else "nst_loss_and_grad", inputs, outputs, manifest)


# Exact tiled evaluation, after Galerne et al., "Scaling Painting Style Transfer" (SPST, 2023).
#
# The loss is a sum over feature positions: L_c = sum_q (F_q - P_q)^2 / (N M) and G = sum_q F_q F_q^T / (N M), and
# L_tv a sum over neighbouring pixel pairs. So an image split into inner regions (a partition) gives the loss
# exactly from per-region partial sums (first graph), with the counts N M of the whole image, not of a tile. The
# gradient at a pixel p is sum_q dL/dF_q dF_q/dp over the features q whose receptive field holds p, with dL/dF_q =
# K F_q + c (F_q - P_q) local given the global K = 2 beta w (D + D^T) / (N^3 M), D = G - A (second graph).
#
# A tile is its inner region plus a halo of real neighbouring pixels; where the inner region meets the image's
# border the tile stops there too, so the convolutions' zero padding is the whole image's. A value computed in a
# tile equals the whole image's where its receptive field does not reach a cut edge of the tile. With a receptive
# field of R px (156 for relu5_1: VGG's 3x3 convolutions and 2x2 poolings), a feature covering p reaches at most
# R - 1 px past p on either side; so with a halo of at least R - 1 px:
# - every feature of the inner region is exact (forward: its receptive field lies in the tile), and
# - every feature whose receptive field holds an inner pixel, and every activation, ReLU mask and pooling argmax on
#   the way back from it, is exact; features spoilt by the cut edge are too far away to reach an inner pixel.
# Tile origins (inner and outer) sit on the pooling grid (2^poolings = 16 px, the halo rounded up to it): the 2x2
# windows are then the whole image's windows, and an inner region's features are whole positions of each layer.
# TV needs only the neighbouring pixel, which the halo (or the image border) provides.


def receptive_field(layers: tuple[Layer, ...]) -> tuple[int, int]:
    """(receptive field in px, stride in px) of the last of ``layers``."""
    size, stride = 1, 1
    for layer in layers:
        if layer.kind == "conv":
            size += 2 * stride  # 3x3, padding 1
        elif layer.kind == "pool":
            size += stride  # 2x2, stride 2
            stride *= 2
    return size, stride


def tile_geometry(layers: tuple[Layer, ...]) -> tuple[int, int]:
    """(halo, alignment) in px for exact tiles of a model made of ``layers`` (160 and 16 to relu5_1)."""
    size, align = receptive_field(layers)
    halo = -(-(size - 1) // align) * align
    return halo, align


def _layer_stride(model: VGG19Features, name: str) -> int:
    index = [layer.name for layer in model.layers].index(name)
    return receptive_field(model.layers[: index + 1])[1]


def _inner_features(b: _Builder, features: str, stride: int) -> str:
    """``features`` (stride ``stride`` px) restricted to the tile's inner region."""
    corners = b.op("Div", mf.TILE_INNER_INPUT, b.i64(stride))  # non-negative: integer division is floor
    starts = b.op("Slice", corners, b.i64(0), b.i64(2))
    return b.op("Slice", features, starts, b.op("Slice", corners, b.i64(2), b.i64(4)), b.i64(2, 3))


def _tile_inputs() -> list[onnx.ValueInfoProto]:
    return [_image_input(), helper.make_tensor_value_info(mf.TILE_INNER_INPUT, TensorProto.INT64, [4])]


def build_tile_forward_graph(model: VGG19Features, manifest: mf.Manifest) -> onnx.ModelProto:
    """tile, inner region -> the inner region's content features, F F^T sums and squared TV differences.

    Also the targets of an image too large to run whole: its content features and Gram sums, tile by tile.
    """
    b = _Builder()
    forward = _forward(b, model, manifest.pooling, manifest.preprocessing)
    layer = {layer.name: layer for layer in model.layers}
    outputs = []
    for name in manifest.content_layers:
        b.output(_inner_features(b, forward.outputs[name], _layer_stride(model, name)), mf.tile_content_name(name))
        outputs.append(_feature_info(mf.tile_content_name(name), layer[name]))
    for name in manifest.style_layers:
        inner = _inner_features(b, forward.outputs[name], _layer_stride(model, name))
        matrix = b.op("Reshape", inner, b.i64(layer[name].out_channels, -1))
        b.output(b.op("MatMul", matrix, b.op("Transpose", matrix, perm=[1, 0])), mf.tile_gram_sum_name(name))
        outputs.append(_gram_info(mf.tile_gram_sum_name(name), layer[name]))
    # The pair (i, i+1) belongs to the region holding i; Slice clamps the image's last row/column away.
    sums = []
    for axis in (2, 3):
        diff = _tv_differences(b, mf.IMAGE_INPUT, axis)
        starts = b.op("Slice", mf.TILE_INNER_INPUT, b.i64(0), b.i64(2))
        ends = b.op("Slice", mf.TILE_INNER_INPUT, b.i64(2), b.i64(4))
        owned = b.op("Slice", diff, starts, ends, b.i64(2, 3))
        sums.append(b.op("Reshape", _sum_of_squares(b, owned), b.i64(1)))
    b.output(b.op("Concat", *sums, axis=0), mf.TILE_TV_SUMS_OUTPUT)
    outputs.append(helper.make_tensor_value_info(mf.TILE_TV_SUMS_OUTPUT, TensorProto.FLOAT, [2]))
    return _model(b, "nst_tile_forward", _tile_inputs(), outputs, manifest)


def build_tile_grad_graph(model: VGG19Features, manifest: mf.Manifest) -> onnx.ModelProto:
    """tile, inner region, global K_l, content targets over the tile, scales -> d(loss)/d(image) on the inner region."""
    b = _Builder()
    forward = _forward(b, model, manifest.pooling, manifest.preprocessing)
    layer = {layer.name: layer for layer in model.layers}
    layer_grads: dict[str, str] = {}
    for index, name in enumerate(manifest.content_layers):
        diff = b.op("Sub", forward.outputs[name], mf.content_target_name(name))
        scale = _layer_weight(b, mf.TILE_CONTENT_SCALES_INPUT, index)
        layer_grads[name] = _add(b, layer_grads.get(name), b.op("Mul", diff, scale))
    for name in manifest.style_layers:
        features = forward.outputs[name]
        matrix = b.op("Reshape", features, b.i64(layer[name].out_channels, -1))
        product = b.op("MatMul", mf.style_grad_matrix_name(name), matrix)
        layer_grads[name] = _add(b, layer_grads.get(name), b.op("Reshape", product, b.op("Shape", features)))
    grad = _backward(b, model, forward, layer_grads, manifest)
    for index, axis in enumerate((2, 3)):
        scale = _layer_weight(b, mf.TILE_TV_SCALES_INPUT, index)
        grad = b.op("Add", grad, _tv_gradient(b, _tv_differences(b, mf.IMAGE_INPUT, axis), scale, axis))
    starts = b.op("Slice", mf.TILE_INNER_INPUT, b.i64(0), b.i64(2))
    ends = b.op("Slice", mf.TILE_INNER_INPUT, b.i64(2), b.i64(4))
    b.output(b.op("Slice", grad, starts, ends, b.i64(2, 3)), mf.TILE_GRAD_OUTPUT)

    inputs = [
        *_tile_inputs(),
        *(_feature_info(mf.content_target_name(n), layer[n]) for n in manifest.content_layers),
        *(_gram_info(mf.style_grad_matrix_name(n), layer[n]) for n in manifest.style_layers),
        helper.make_tensor_value_info(mf.TILE_CONTENT_SCALES_INPUT, TensorProto.FLOAT, [len(manifest.content_layers)]),
        helper.make_tensor_value_info(mf.TILE_TV_SCALES_INPUT, TensorProto.FLOAT, [2]),
    ]
    output = helper.make_tensor_value_info(
        mf.TILE_GRAD_OUTPUT, TensorProto.FLOAT, [1, 3, "inner.height", "inner.width"]
    )
    return _model(b, "nst_tile_grad", inputs, [output], manifest)


def write_graphs(model: VGG19Features, manifest: mf.Manifest, directory: Path) -> None:
    """Write the graphs, their circular-padding variants and the tile graphs into ``directory`` (which must exist)."""
    if deepest_layer(manifest.content_layers + manifest.style_layers) != model.layers[-1].name:
        raise ValueError("the model must end at the deepest loss layer")
    onnx.save(build_targets_graph(model, manifest), directory / mf.TARGETS_FILE)
    onnx.save(build_loss_graph(model, manifest), directory / mf.LOSS_FILE)
    onnx.save(build_targets_graph(model, manifest, circular=True), directory / mf.CIRCULAR_TARGETS_FILE)
    onnx.save(build_loss_graph(model, manifest, circular=True), directory / mf.CIRCULAR_LOSS_FILE)
    onnx.save(build_tile_forward_graph(model, manifest), directory / mf.TILE_FORWARD_FILE)
    onnx.save(build_tile_grad_graph(model, manifest), directory / mf.TILE_GRAD_FILE)
