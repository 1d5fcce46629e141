"""The optimisers' steps as small ONNX graphs, so that they run where the loss graph runs.

Built here, by the server, with onnx's helper when a job first needs one, not by `nst-export`: they depend
on no weights, only on the optimiser code that binds their inputs and outputs by name (``device_optimise``),
so they stay in step with it, every L-BFGS history length gets its graph without a file per length, and a
model directory exported before them still works. The price is the onnx package in the server's extras.

Every graph computes exactly what the host optimiser in ``optimise`` computes, operation for operation in
float32, so the two placements agree to float32 round-off (sums of products are the one place where the order
of additions differs: BLAS's sdot against ReduceSum). Image-sized tensors have the loss graph's shape,
(1, 3, height, width) with both sides dynamic, so one buffer can be the loss graph's input or output and a
step graph's in turn without a copy. Only small tensors (``scalars``) are meant to be read by the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # the exported loss graphs' opset: one CUDA op table covers both
IR_VERSION = 8  # what opset 17 needs; onnxruntime 1.22 reads up to IR 10

IMAGE_SHAPE: list[int | str] = [1, 3, "height", "width"]

# Adam: x, grad, first and second moments, the step counter -> the same, one step on.
ADAM_INPUTS = ("x", "grad", "first", "second", "t", "schedule", "hyper")
ADAM_OUTPUTS = ("x_next", "first_next", "second_next", "t_next")
# L-BFGS: the direction and the first trial point of the line search, its halvings, and a new (s, y) pair.
DIRECTION_OUTPUTS = ("direction", "trial", "s", "scalars")  # scalars: descent (1/0), step, decrease
TRIAL_INPUTS = ("x", "direction", "grad", "step")
TRIAL_OUTPUTS = ("trial", "s", "decrease")
PAIR_INPUTS = ("grad_next", "grad", "s")
PAIR_OUTPUTS = ("y", "scalars")  # scalars: s.y, y.y


def direction_inputs(pairs: int) -> tuple[str, ...]:
    """Inputs of the direction graph with ``pairs`` pairs, newest first: x, grad, s_0.., y_0.., rho."""
    history = tuple(f"s_{k}" for k in range(pairs)) + tuple(f"y_{k}" for k in range(pairs))
    return ("x", "grad", *history, *(("rho",) if pairs else ()))


@dataclass
class _Builder:
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    _count: int = 0

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        self._count += 1
        name = f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def const(self, value: np.ndarray) -> str:
        self._count += 1
        name = f"const_{self._count}"
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def f32(self, value: float) -> str:
        return self.const(np.array(value, np.float32))

    def output(self, tensor: str, name: str) -> None:
        self.nodes.append(helper.make_node("Identity", [tensor], [name], name=f"out_{name}"))

    def dot(self, a: str, b: str) -> str:
        """sum(a * b) as a scalar."""
        return self.op("ReduceSum", self.op("Mul", a, b), keepdims=0)

    def element(self, vector: str, index: int) -> str:
        """vector[index] as a scalar."""
        return self.op("Gather", vector, self.const(np.array(index, np.int64)), axis=0)

    def clip01(self, tensor: str) -> str:
        return self.op("Clip", tensor, self.f32(0.0), self.f32(1.0))


def _image(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, IMAGE_SHAPE)


def _vector(name: str, length: int | str, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, [length])


def _scalar(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [])


def _model(
    b: _Builder, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, name, inputs, outputs, initializer=b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nst_server")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def adam_step() -> onnx.ModelProto:
    """One projected Adam step, as ``optimise.adam`` takes it.

    ``t`` (int64, [1]) indexes ``schedule`` (steps x 2: the bias-corrected learning rate lr / (1 - beta1^t)
    and sqrt(1 - beta2^t), worked out in float64 on the host once per job, as the host step does each
    iteration) and comes back incremented, so nothing but the loss crosses per iteration. ``hyper`` is
    (beta1, 1 - beta1, beta2, 1 - beta2, epsilon).
    """
    b = _Builder()
    beta1, one_minus_beta1, beta2, one_minus_beta2, epsilon = (b.element("hyper", k) for k in range(5))
    row = b.op("Gather", "schedule", b.op("Squeeze", "t", b.const(np.array([0], np.int64))), axis=0)
    rate, correction = b.element(row, 0), b.element(row, 1)
    first = b.op("Add", b.op("Mul", "first", beta1), b.op("Mul", "grad", one_minus_beta1))
    second = b.op("Add", b.op("Mul", "second", beta2), b.op("Mul", b.op("Mul", "grad", "grad"), one_minus_beta2))
    denominator = b.op("Add", b.op("Div", b.op("Sqrt", second), correction), epsilon)
    update = b.op("Mul", b.op("Div", first, denominator), rate)
    b.output(b.clip01(b.op("Sub", "x", update)), "x_next")
    b.output(first, "first_next")
    b.output(second, "second_next")
    b.output(b.op("Add", "t", b.const(np.array([1], np.int64))), "t_next")
    inputs = [
        _image("x"),
        _image("grad"),
        _image("first"),
        _image("second"),
        _vector("t", 1, TensorProto.INT64),
        helper.make_tensor_value_info("schedule", TensorProto.FLOAT, ["steps", 2]),
        _vector("hyper", 5),
    ]
    outputs = [_image("x_next"), _image("first_next"), _image("second_next"), _vector("t_next", 1, TensorProto.INT64)]
    return _model(b, "nst_adam_step", inputs, outputs)


def _free(b: _Builder) -> str:
    """1 where a pixel may move, 0 where it sits at a bound that its gradient pushes it through."""
    at_low = b.op("And", b.op("LessOrEqual", "x", b.f32(0.0)), b.op("Greater", "grad", b.f32(0.0)))
    at_high = b.op("And", b.op("GreaterOrEqual", "x", b.f32(1.0)), b.op("Less", "grad", b.f32(0.0)))
    return b.op("Cast", b.op("Not", b.op("Or", at_low, at_high)), to=TensorProto.FLOAT)


def _trial(b: _Builder, direction: str, step: str) -> tuple[str, str, str]:
    """The projected trial point x + step * direction, the step s it takes and grad.s."""
    trial = b.clip01(b.op("Add", b.op("Mul", direction, step), "x"))
    s = b.op("Sub", trial, "x")
    return trial, s, b.dot("grad", s)


def lbfgs_direction(pairs: int) -> onnx.ModelProto:
    """The projected L-BFGS direction from ``pairs`` (s, y) pairs, and the line search's first trial point.

    Inputs s_k, y_k are newest first (k = 0 newest), rho_k = 1 / s_k.y_k. As in ``optimise.lbfgs``: the
    two-loop recursion on the free pixels' gradient with H0 scaled by the newest pair; where the result is no
    descent direction, the projected negative gradient instead (``scalars[0]`` = 0 tells the host to forget
    its pairs); the first step is 1 with pairs and 1 / |direction| without.
    """
    b = _Builder()
    free = _free(b)
    masked = b.op("Mul", "grad", free)
    q = masked
    alphas = []
    rho = [b.element("rho", k) for k in range(pairs)]
    for k in range(pairs):  # newest to oldest
        alpha = b.op("Mul", rho[k], b.dot(f"s_{k}", q))
        q = b.op("Sub", q, b.op("Mul", f"y_{k}", alpha))
        alphas.append(alpha)
    if pairs:
        gamma = b.op("Reciprocal", b.op("Mul", rho[0], b.dot("y_0", "y_0")))
        q = b.op("Mul", q, gamma)
    for k in reversed(range(pairs)):  # oldest to newest
        beta = b.op("Mul", rho[k], b.dot(f"y_{k}", q))
        q = b.op("Add", q, b.op("Mul", f"s_{k}", b.op("Sub", alphas[k], beta)))
    lbfgs = b.op("Mul", b.op("Neg", q), free)
    descent = b.op("Less", b.dot("grad", lbfgs), b.f32(0.0))
    direction = b.op("Where", descent, lbfgs, b.op("Neg", masked))
    norm = b.op("Sqrt", b.dot(direction, direction))
    unit = b.op("Reciprocal", b.op("Max", norm, b.f32(1e-30)))
    step = b.op("Where", descent, b.f32(1.0), unit) if pairs else unit
    trial, s, decrease = _trial(b, direction, step)
    b.output(direction, "direction")
    b.output(trial, "trial")
    b.output(s, "s")
    descent_flag = b.op("Cast", descent, to=TensorProto.FLOAT)
    axis = b.const(np.array([0], np.int64))
    scalars = [b.op("Unsqueeze", v, axis) for v in (descent_flag, step, decrease)]
    b.output(b.op("Concat", *scalars, axis=0), "scalars")
    inputs = [_image("x"), _image("grad")]
    inputs += [_image(f"s_{k}") for k in range(pairs)] + [_image(f"y_{k}") for k in range(pairs)]
    if pairs:
        inputs.append(_vector("rho", pairs))
    outputs = [_image("direction"), _image("trial"), _image("s"), _vector("scalars", 3)]
    return _model(b, f"nst_lbfgs_direction_{pairs}", inputs, outputs)


def lbfgs_trial() -> onnx.ModelProto:
    """A backtracking trial point: the step given, halved by the host from the direction graph's."""
    b = _Builder()
    trial, s, decrease = _trial(b, "direction", "step")
    b.output(trial, "trial")
    b.output(s, "s")
    b.output(decrease, "decrease")
    inputs = [_image("x"), _image("direction"), _image("grad"), _scalar("step")]
    return _model(b, "nst_lbfgs_trial", inputs, [_image("trial"), _image("s"), _scalar("decrease")])


def lbfgs_pair() -> onnx.ModelProto:
    """After an accepted step: y = grad_next - grad, and s.y, y.y for the host's curvature test."""
    b = _Builder()
    y = b.op("Sub", "grad_next", "grad")
    b.output(y, "y")
    unsqueeze = b.const(np.array([0], np.int64))
    sy, yy = b.op("Unsqueeze", b.dot("s", y), unsqueeze), b.op("Unsqueeze", b.dot(y, y), unsqueeze)
    b.output(b.op("Concat", sy, yy, axis=0), "scalars")
    inputs = [_image("grad_next"), _image("grad"), _image("s")]
    return _model(b, "nst_lbfgs_pair", inputs, [_image("y"), _vector("scalars", 2)])
