"""`python -m bench.profile` and the FLOP count it divides by, on a model exported from seeded random weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from nst_export.vgg import DEFAULT_STYLE_LAYERS, layers_up_to

from bench.flops import convolution_flops, evaluation_flops

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_flops_of_one_evaluation_at_a_tiny_size() -> None:
    """At 16x16 every convolution's size is known by hand: the count is the sum of 2 x 9 x Cin x Cout x H x W,
    twice (forward and input gradient), plus each style layer's Gram and its gradient."""
    sides = {"1": 16, "2": 8, "3": 4, "4": 2, "5": 1}  # block N runs after N-1 poolings
    convs = [layer for layer in layers_up_to("relu5_1") if layer.kind == "conv"]
    expected_conv = sum(2 * 2 * 9 * c.in_channels * c.out_channels * sides[c.name[4]] ** 2 for c in convs)
    channels = {"relu1_1": 64, "relu2_1": 128, "relu3_1": 256, "relu4_1": 512, "relu5_1": 512}
    expected_gram = sum(2 * 2 * channels[name] ** 2 * sides[name[4]] ** 2 for name in DEFAULT_STYLE_LAYERS)
    assert convolution_flops(16, 16) == expected_conv
    assert evaluation_flops(16, 16) == expected_conv + expected_gram


def test_profile_accounts_for_every_convolution(model_dir: Path) -> None:
    """The profiler's run sees all 26 convolutions (13 forward, 13 input gradients) and shares that add up."""
    command = [sys.executable, "-m", "bench.profile", "--model", str(model_dir), "--size", "64", "--repeats", "2"]
    done = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    operators = result["operators"]
    assert result["size"] == [64, 48]
    assert operators["Conv"]["nodes"] == 26
    assert 0.5 < sum(row["share"] for row in operators.values()) <= 1.0  # kernels inside the run, plus its overhead
    assert result["conv_gflops_per_s"] > 0
