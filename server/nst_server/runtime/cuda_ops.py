"""Which of our graphs run wholly on onnxruntime's CUDA execution provider, checked without a GPU.

Two questions, answered from the graph alone:

- **Does every node have a CUDA kernel?** A node without one silently runs on the CPU, with a copy of its
  inputs and outputs across the bus each run. ``CUDA_KERNELS`` is the CUDA provider's table for the operators
  our graphs use, transcribed from onnxruntime's docs/OperatorKernels.md ("Operators implemented by
  CUDAExecutionProvider", microsoft/onnxruntime at commit 001d12d, read for this check): for each operator, the
  opset ranges of its kernels and the element types of the input they are typed on. Every range used here
  starts at opset 16 or earlier, long before onnxruntime 1.22, the oldest onnxruntime-gpu pyproject.toml allows.
  A graph must also be loadable by that release at all: ``MAX_IR_VERSION`` and ``MAX_OPSET`` are those of
  ONNX 1.17 (IR 10, opset 22), which onnxruntime 1.21 already implemented, so 1.22 certainly does.
- **Can its runs be captured as a CUDA graph?** onnxruntime (``enable_cuda_graph``) refuses a session whose
  nodes are not all on CUDA, except shape computations on the CPU when no copy between host and device is
  needed. Shape and Size put their output in host memory, so integer arithmetic on shapes stays on the CPU;
  a host tensor read by a CUDA kernel anywhere but its host-memory inputs (a Reshape's shape, a Pad's pads, a
  Slice's bounds, axes) needs a MemcpyFromHost node, and then capture is refused. ``host_copies`` lists
  those places. The exported graphs count elements with ConstantOfShape, whose shape input is a host input,
  instead of Cast(Size(x)), whose Cast would read Size's host output (``nst_export.onnx_graphs._element_count``),
  so they have none.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto

MAX_IR_VERSION = 10
MAX_OPSET = 22

_F = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16})
_NUMERIC = _F | {TensorProto.INT32, TensorProto.INT64, TensorProto.UINT32, TensorProto.UINT64}
_ALL = _NUMERIC | {TensorProto.BOOL, TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16}
_BOOL = frozenset({TensorProto.BOOL})
_LAST = 10_000  # "N+" in the table: from opset N on

# op -> [(first opset, last opset, element types of the typed input)]; only the ai.onnx rows our graphs need.
CUDA_KERNELS: dict[str, list[tuple[int, int, frozenset[int]]]] = {
    "Add": [(7, 12, _NUMERIC), (13, 13, _NUMERIC), (14, _LAST, _ALL)],
    "And": [(7, _LAST, _BOOL)],
    "AveragePool": [(7, 9, _F), (10, 10, _F), (11, 18, _F), (19, 21, _F), (22, _LAST, _F)],
    "Cast": [(6, 8, _ALL), (9, 12, _ALL), (13, 18, _ALL), (19, 20, _ALL), (21, 22, _ALL), (23, _LAST, _ALL)],
    "Clip": [
        (6, 10, frozenset({TensorProto.FLOAT})),
        (11, 11, frozenset({TensorProto.FLOAT})),
        (12, 12, _F),
        (13, _LAST, _F),
    ],
    "Concat": [(4, 10, _ALL), (11, 12, _ALL), (13, _LAST, _ALL)],
    "ConstantOfShape": [(9, _LAST, frozenset({TensorProto.INT64}))],  # typed on its shape input
    "Conv": [(1, 10, _F), (11, 21, _F), (22, _LAST, _F)],
    "DepthToSpace": [(1, 10, _F), (11, 12, _F), (13, _LAST, _F)],
    "Div": [(7, 12, _NUMERIC), (13, 13, _NUMERIC), (14, _LAST, _ALL)],
    "Equal": [
        (7, 10, frozenset({TensorProto.BOOL, TensorProto.INT32, TensorProto.INT64})),
        (11, 12, _NUMERIC | _BOOL),
        (13, _LAST, _NUMERIC | _BOOL),
    ],
    "Gather": [(1, 10, _ALL), (11, 12, _ALL), (13, _LAST, _ALL)],
    "Greater": [(7, 8, _F), (9, 12, _NUMERIC), (13, _LAST, _NUMERIC)],
    "GreaterOrEqual": [(12, 15, _NUMERIC), (16, _LAST, _NUMERIC)],
    "Identity": [(1, 12, _ALL), (13, 13, _ALL), (14, 18, _ALL), (19, _LAST, _ALL)],
    "Less": [(7, 8, _F), (9, 12, _NUMERIC), (13, _LAST, _NUMERIC)],
    "LessOrEqual": [(12, 15, _NUMERIC), (16, _LAST, _NUMERIC)],
    "MatMul": [(1, 8, _F), (9, 12, _F), (13, _LAST, _F)],
    "Max": [(6, 11, _F), (12, 12, _NUMERIC), (13, _LAST, _NUMERIC)],
    "MaxPool": [(1, 7, _F), (8, 9, _F), (10, 10, _F), (11, 11, _F), (12, _LAST, _F)],
    "Mul": [(7, 12, _NUMERIC), (13, 13, _NUMERIC), (14, _LAST, _ALL)],
    "Neg": [
        (6, 12, _F | {TensorProto.INT32, TensorProto.INT64}),
        (13, _LAST, _F | {TensorProto.INT32, TensorProto.INT64}),
    ],
    "Not": [(1, _LAST, _BOOL)],
    "Or": [(7, _LAST, _BOOL)],
    "Pad": [(2, 10, _F), (11, 12, _F), (13, 17, _F | _BOOL), (18, _LAST, _F | _BOOL)],
    "Reciprocal": [(6, 12, _F), (13, _LAST, _F)],
    "ReduceSum": [
        (1, 12, _F | {TensorProto.INT32, TensorProto.INT64}),
        (13, _LAST, _F | {TensorProto.INT32, TensorProto.INT64}),
    ],
    "Relu": [(6, 12, _F), (13, 13, _F), (14, _LAST, _F)],
    "Reshape": [
        (1, 4, _ALL),
        (5, 12, _ALL),
        (13, 13, _ALL),
        (14, 18, _ALL),
        (19, 20, _ALL),
        (21, 22, _ALL),
        (23, _LAST, _ALL),
    ],
    "Resize": [(10, 10, _F), (11, 12, _F), (13, 17, _F), (18, 18, _F), (19, _LAST, _F)],
    "Shape": [(1, 12, _ALL), (13, 14, _ALL), (15, 18, _ALL), (19, 20, _ALL), (21, 22, _ALL), (23, _LAST, _ALL)],
    "Size": [(1, 12, _ALL), (13, _LAST, _ALL)],
    "Slice": [(1, 9, _ALL), (10, 10, _ALL), (11, 12, _ALL), (13, _LAST, _ALL)],
    "SpaceToDepth": [(1, 12, _F), (13, _LAST, _F)],
    "Split": [(2, 10, _ALL), (11, 12, _ALL), (13, 17, _ALL), (18, _LAST, _ALL)],
    "Sqrt": [(6, 12, _F), (13, _LAST, _F)],
    "Squeeze": [(1, 10, _ALL), (11, 12, _ALL), (13, 20, _ALL), (21, 22, _ALL), (23, _LAST, _ALL)],
    "Sub": [(7, 12, _NUMERIC), (13, 13, _NUMERIC), (14, _LAST, _ALL)],
    "Transpose": [(1, 12, _ALL), (13, 20, _ALL), (21, 22, _ALL), (23, _LAST, _ALL)],
    "Unsqueeze": [(1, 10, _ALL), (11, 12, _ALL), (13, 20, _ALL), (21, 22, _ALL), (23, _LAST, _ALL)],
    "Where": [
        (9, 15, _F | {TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8}),
        (16, _LAST, _F | {TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8}),
    ],
}

# Inputs that the CUDA kernels read from host memory (by index): shapes, bounds and axes.
HOST_INPUTS: dict[str, frozenset[int]] = {
    "ConstantOfShape": frozenset({0}),
    "Reshape": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Pad": frozenset({1, 3}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "ReduceSum": frozenset({1}),
    "Split": frozenset({1}),
    "Resize": frozenset({1, 2, 3}),
}
_TYPED_INPUT = {"Where": 1}  # the input whose type selects the kernel, where it is not the first
_HOST_PRODUCERS = frozenset({"Shape", "Size"})
_SHAPE_ARITHMETIC = frozenset({"Slice", "Mul", "Sub", "Add", "Div", "Concat", "Gather", "Unsqueeze", "Squeeze"})


@dataclass(frozen=True, slots=True)
class Check:
    """What stands between a graph and running wholly on CUDA (empty lists: nothing)."""

    unsupported: list[str]  # "node (op, opset, type)" without a CUDA kernel, or the graph's IR/opset too new
    host_copies: list[str]  # nodes reading a host tensor on the device: capture as a CUDA graph is refused

    @property
    def runs_on_cuda(self) -> bool:
        return not self.unsupported

    @property
    def capturable(self) -> bool:
        return not self.unsupported and not self.host_copies


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        types[value.name] = value.type.tensor_type.elem_type
    for tensor in graph.initializer:
        types[tensor.name] = tensor.data_type
    return types


def _since_version(op: str, opset: int) -> int:
    """The version of ``op`` that a model importing ``opset`` uses."""
    return onnx.defs.get_schema(op, opset).since_version


def check(model: onnx.ModelProto) -> Check:
    """Check ``model`` against the CUDA provider's kernels and the rules for CUDA graph capture."""
    unsupported = []
    opset = _opset(model)
    if model.ir_version > MAX_IR_VERSION:
        unsupported.append(f"IR version {model.ir_version} > {MAX_IR_VERSION} (onnxruntime 1.22 cannot load it)")
    if opset > MAX_OPSET:
        unsupported.append(f"opset {opset} > {MAX_OPSET}")
    types = _elem_types(model)
    initializers = {tensor.name for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            unsupported.append(f"{node.name} ({node.domain}.{node.op_type}): no CUDA kernel listed")
            continue
        version = _since_version(node.op_type, opset)
        typed = node.input[_TYPED_INPUT.get(node.op_type, 0)] if node.input else ""
        element = types.get(typed, TensorProto.UNDEFINED)
        kernels = CUDA_KERNELS.get(node.op_type, [])
        if not any(first <= version <= last and element in allowed for first, last, allowed in kernels):
            name = TensorProto.DataType.Name(element)
            unsupported.append(f"{node.name} ({node.op_type}-{version}, {name}): no CUDA kernel")
    host: set[str] = set()
    host_copies = []
    for node in model.graph.node:  # nodes are topologically sorted
        inputs = [name for name in node.input if name]
        if node.op_type in _HOST_PRODUCERS:
            host.update(node.output)
            continue
        shape_math = (
            node.op_type in _SHAPE_ARITHMETIC
            and inputs
            and all(name in host or name in initializers for name in inputs)
            and any(name in host for name in inputs)
            and all(types.get(out) == TensorProto.INT64 for out in node.output)
        )
        if shape_math:  # integer arithmetic on shapes: onnxruntime keeps it on the CPU
            host.update(node.output)
            continue
        reads_host = [
            i for i, name in enumerate(node.input) if name in host and i not in HOST_INPUTS.get(node.op_type, ())
        ]
        if reads_host:
            host_copies.append(f"{node.name} ({node.op_type} reads host tensor {node.input[reads_host[0]]})")
    return Check(unsupported, host_copies)
