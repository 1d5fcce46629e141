"""Ways to write the backward pass's element-wise steps in ONNX, timed in onnxruntime on one tensor the size
of conv1_2's output at 512x384 (64 x 384 x 512): what the export chose and what it replaced."""

from __future__ import annotations

import time
from statistics import median

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

CHANNELS, HEIGHT, WIDTH = 64, 384, 512


def _seconds(nodes: list, feeds: dict[str, np.ndarray], constants: list, threads: int, repeats: int = 9) -> float:
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(a.shape)) for name, a in feeds.items()]
    graph = helper.make_graph(
        nodes, "f", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], initializer=constants
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        timings.append(time.perf_counter() - start)
    return median(timings)


def measure(threads: int) -> dict[str, float]:
    """Milliseconds per formulation."""
    rng = np.random.default_rng(0)
    full = (1, CHANNELS, HEIGHT, WIDTH)
    relu_out = np.maximum(rng.standard_normal(full, dtype=np.float32), 0)
    grad = rng.standard_normal(full, dtype=np.float32)
    quarter = rng.standard_normal((1, CHANNELS, HEIGHT // 2, WIDTH // 2), dtype=np.float32)
    zero = numpy_helper.from_array(np.array(0, np.float32), "zero")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node
    relu_feeds = {"y": relu_out, "g": grad}
    cases = {
        "relu backward: Where(y > 0, g, 0) (before)": (
            [node("Greater", ["y", "zero"], ["m"]), node("Where", ["m", "g", "zero"], ["out"])],
            relu_feeds,
            [zero],
        ),
        "relu backward: g * Cast(y > 0) (export)": (
            [
                node("Greater", ["y", "zero"], ["m"]),
                node("Cast", ["m"], ["f"], to=TensorProto.FLOAT),
                node("Mul", ["g", "f"], ["out"]),
            ],
            relu_feeds,
            [zero],
        ),
        "relu backward: g * Sign(y)": ([node("Sign", ["y"], ["s"]), node("Mul", ["g", "s"], ["out"])], relu_feeds, []),
        "2x2 scatter: DepthToSpace of 4 pieces (max pooling)": (
            [
                node("Concat", ["q", "q", "q", "q"], ["c"], axis=1),
                node("DepthToSpace", ["c"], ["out"], blocksize=2, mode="DCR"),
            ],
            {"q": quarter},
            [],
        ),
        "2x2 spread: nearest Resize (avg pooling, export)": (
            [
                node(
                    "Resize",
                    ["q", "", "scales"],
                    ["out"],
                    mode="nearest",
                    coordinate_transformation_mode="asymmetric",
                    nearest_mode="floor",
                )
            ],
            {"q": quarter},
            [scales],
        ),
        "max pooling with indices + MaxUnpool": (
            [
                node("MaxPool", ["y"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
                node("MaxUnpool", ["p", "i"], ["out"], kernel_shape=[2, 2], strides=[2, 2]),
            ],
            {"y": relu_out},
            [],
        ),
    }
    return {name: _seconds(nodes, feeds, constants, threads) * 1e3 for name, (nodes, feeds, constants) in cases.items()}
