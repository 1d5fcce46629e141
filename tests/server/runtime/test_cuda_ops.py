"""Every graph the server runs has a CUDA kernel for every node, and loads in the oldest onnxruntime-gpu allowed.

No GPU is needed: ``nst_server.runtime.cuda_ops`` holds the CUDA provider's operator table (from onnxruntime's
docs/OperatorKernels.md) and the IR/opset limits, and these tests check the exported graphs and the step
graphs against them, and that the check fails on graphs that would not run wholly on CUDA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from nst import manifest as mf
from nst_server.runtime import cuda_ops, step_graphs
from onnx import TensorProto, helper, numpy_helper


def _step_graphs() -> list[onnx.ModelProto]:
    return [
        step_graphs.adam_step(),
        step_graphs.lbfgs_trial(),
        step_graphs.lbfgs_pair(),
        *(step_graphs.lbfgs_direction(k) for k in (0, 1, 10, 100)),
    ]


@pytest.mark.parametrize("graph", _step_graphs(), ids=lambda g: g.graph.name)
def test_step_graphs_run_on_cuda_and_can_be_captured(graph: onnx.ModelProto) -> None:
    check = cuda_ops.check(graph)
    assert check.unsupported == []
    assert check.host_copies == []


@pytest.mark.slow  # exports a second model (Caffe weights, average pooling)
@pytest.mark.parametrize("name", [mf.TARGETS_FILE, mf.LOSS_FILE, mf.CIRCULAR_TARGETS_FILE, mf.CIRCULAR_LOSS_FILE])
def test_exported_graphs_run_on_cuda_and_can_be_captured(model_dir: Path, caffe_avg_model_dir: Path, name: str) -> None:
    """Both poolings: every node has a CUDA kernel, and no node reads a host tensor on the device (the element
    counts of the means come from ConstantOfShape, not Size->Cast), so nothing keeps a graph out of CUDA graph
    capture."""
    for directory in (model_dir, caffe_avg_model_dir):
        model = onnx.load(directory / name)
        check = cuda_ops.check(model)
        assert check.unsupported == [], directory
        assert check.host_copies == [], directory
        assert "Size" not in {node.op_type for node in model.graph.node}


def test_an_element_count_from_constant_of_shape_needs_no_copy() -> None:
    """The check's placement of each node of an element count, as onnxruntime's CUDA provider places them:
    Shape and Slice on the host (shape arithmetic), ConstantOfShape on the device reading its shape as a host
    input, the sum on the device; and the same count through Size->Cast needs a copy."""
    shape_count = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Slice", ["s", "one", "two"], ["h"], name="slice"),
        helper.make_node("ConstantOfShape", ["h"], ["ones"], name="ones", value=numpy_helper.from_array(np.ones(1))),
        helper.make_node("ReduceSum", ["ones"], ["n"], name="sum", keepdims=0),
        helper.make_node("Cast", ["n"], ["count"], name="count", to=TensorProto.FLOAT),
        helper.make_node("Div", ["x", "count"], ["y"], name="div"),
    ]
    init = [numpy_helper.from_array(np.array([i], np.int64), name) for i, name in ((1, "one"), (2, "two"))]
    check = cuda_ops.check(_graph(shape_count, [_x()], [_x("y")], init=init))
    assert check.unsupported == []
    assert check.host_copies == []


def _graph(nodes: list, inputs: list, outputs: list, opset: int = 17, ir: int = 8, init: list | None = None):  # type: ignore[no-untyped-def]
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, initializer=init or []),
        opset_imports=[helper.make_opsetid("", opset)],
    )
    model.ir_version = ir
    return model


def _x(name: str = "x", dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, [2, 3])


def test_an_op_without_a_cuda_kernel_fails() -> None:
    model = _graph([helper.make_node("Det", ["x"], ["y"], name="det")], [_x()], [_x("y")])  # CPU-only operator
    assert cuda_ops.check(model).unsupported == ["det (Det-11, FLOAT): no CUDA kernel"]


def test_a_type_without_a_cuda_kernel_fails() -> None:
    int32 = TensorProto.INT32
    model = _graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [_x("x", int32), helper.make_tensor_value_info("w", int32, [3, 2])],
        [helper.make_tensor_value_info("y", int32, [2, 2])],
    )
    assert cuda_ops.check(model).unsupported == ["mm (MatMul-13, INT32): no CUDA kernel"]


def test_a_graph_too_new_for_onnxruntime_1_22_fails() -> None:
    relu = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    assert cuda_ops.check(_graph(relu, [_x()], [_x("y")])).unsupported == []
    assert cuda_ops.check(_graph(relu, [_x()], [_x("y")], ir=11)).unsupported == [
        "IR version 11 > 10 (onnxruntime 1.22 cannot load it)"
    ]
    assert cuda_ops.check(_graph(relu, [_x()], [_x("y")], opset=23, ir=10)).unsupported == ["opset 23 > 22"]


def test_shapes_feeding_host_inputs_can_be_captured_but_a_size_used_as_a_number_cannot() -> None:
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    reshape = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Slice", ["s", "axes", "end"], ["part"], name="slice"),
        helper.make_node("Concat", ["part", "rest"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
    ]
    init = [
        axes,
        numpy_helper.from_array(np.array([1], np.int64), "end"),
        numpy_helper.from_array(np.array([-1], np.int64), "rest"),
    ]
    check = cuda_ops.check(
        _graph(reshape, [_x()], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], init=init)
    )
    assert check.capturable, check
    mean = [
        helper.make_node("Size", ["x"], ["n"], name="size"),
        helper.make_node("Cast", ["n"], ["count"], name="count", to=TensorProto.FLOAT),
        helper.make_node("Div", ["x", "count"], ["y"], name="div"),
    ]
    check = cuda_ops.check(_graph(mean, [_x()], [_x("y")]))
    assert check.runs_on_cuda
    assert not check.capturable
    assert check.host_copies == ["count (Cast reads host tensor n)"]
