"""What produced a benchmark: the machine, its CPU features, library versions, and its practical fp32 peak."""

from __future__ import annotations

import os
import platform
import time
from importlib.metadata import version
from statistics import median
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

PEAK_MATRIX_SIZE = 4096
_FLAGS_OF_INTEREST = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
_LIBRARIES = ("onnxruntime", "onnxruntime-gpu", "torch", "numpy", "scipy", "grpcio", "protobuf")


def _cpu() -> tuple[str, list[str]]:
    """CPU model name and the vector-unit flags that decide fp32 throughput (Linux; empty elsewhere)."""
    try:
        text = open("/proc/cpuinfo").read()  # noqa: SIM115 (small file, read once)
    except OSError:
        return platform.processor(), []
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return fields.get("model name", platform.processor()), [flag for flag in _FLAGS_OF_INTEREST if flag in flags]


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except Exception:  # PackageNotFoundError, or a broken install: either way not usable here
        return None


def describe(threads: int) -> dict[str, Any]:
    model, flags = _cpu()
    return {
        "cpu": model,
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {name: v for name in _LIBRARIES if (v := _installed(name))},
        "onnxruntime_providers": ort.get_available_providers(),
    }


def _seconds(run: Any, repeats: int = 5) -> float:
    run()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return median(timings)


def matmul_peaks(threads: int, n: int = PEAK_MATRIX_SIZE) -> dict[str, float]:
    """GFLOP/s of an n x n fp32 matrix multiply in numpy (its BLAS), PyTorch and onnxruntime (MLAS)."""
    import torch

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    flops = 2 * n**3
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
    )
    torch.set_num_threads(threads)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    return {
        "numpy": flops / _seconds(lambda: a @ b) / 1e9,
        "torch": flops / _seconds(lambda: ta @ tb) / 1e9,
        "onnxruntime": flops / _seconds(lambda: session.run(None, {"a": a, "b": b})) / 1e9,
    }
