"""A job's memory estimate from its plan, the budget's default, and --max-memory's sizes (pure: no decoding)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from nst.events import Optimizer
from nst.manifest import Manifest
from nst_server.domain import memory
from nst_server.domain.memory import GIB, JobPlan, parse_size, peak_bytes

MIB = 1 << 20
MANIFEST = Manifest("random", "0" * 64, "max", "imagenet", ("relu4_2",),
                    ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"), 17, "test")  # fmt: skip


def _plan(**changes: object) -> JobPlan:
    base = JobPlan(
        output=(512, 512), styles=((512, 512),), has_content=True, has_init_image=False, output_masks=0,
        source_masked=(False,), largest_source_px=512 * 512, largest_working_px=512 * 512,
        optimizer=Optimizer.LBFGS, lbfgs_history=10, previews=False, colour_preservation=False,
        content_layers=MANIFEST.content_layers, style_layers=MANIFEST.style_layers, whole_max_side_px=576,
        request_bytes=1000,
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def test_the_estimate_bounds_the_measured_tiled_2048_job() -> None:
    """BENCHMARKS.md: a 2048x1536 tiled job (one style of its size, L-BFGS) peaked at 2.38 GB with about 0.72 GB of
    it the loaded model, so 1.66 GB for the job; the estimate must not be below it."""
    plan = _plan(output=(2048, 1536), styles=((2048, 1536),), largest_source_px=2048 * 1536,
                 largest_working_px=2048 * 1536)  # fmt: skip
    assert 1.66e9 <= peak_bytes(plan) <= 2.5e9


def test_the_estimate_bounds_the_measured_whole_1024_job() -> None:
    """bench.large: a whole 1024x768 job peaked at 3.37 GB, 0.55 GB of which is the loaded model."""
    plan = _plan(output=(1024, 768), styles=((1024, 768),), whole_max_side_px=None)
    assert 2.82e9 <= peak_bytes(plan) <= 3.5e9


def test_each_term_follows_its_plan_field() -> None:
    """Styles, history (L-BFGS only), previews, masks and tiling each change the estimate the way the formula says."""
    base = _plan()
    assert peak_bytes(_plan(styles=((512, 512),) * 2, source_masked=(False, False))) > peak_bytes(base)
    assert memory.parts(_plan(lbfgs_history=20))["optimiser"] > memory.parts(base)["optimiser"]
    assert memory.parts(_plan(optimizer=Optimizer.ADAM, lbfgs_history=20))["optimiser"] == (
        memory.FLOAT_RGB * 512 * 512 * memory.OPTIMISER_VECTORS
    )
    assert memory.parts(_plan(previews=True))["encoding"] == 2 * memory.parts(base)["encoding"]
    assert memory.parts(_plan(output_masks=2))["inputs"] > memory.parts(base)["inputs"]
    # Tiled, the evaluation is one tile with its halo whatever the image; whole, it is the image.
    big = {"output": (2048, 2048), "styles": ((2048, 2048),)}
    assert memory.parts(_plan(**big))["evaluation"] == memory.EVALUATION_BYTES_PER_PX * 576 * 576
    assert memory.parts(_plan(**big, whole_max_side_px=None))["evaluation"] == (
        memory.EVALUATION_BYTES_PER_PX * 2048 * 2048
    )


def test_content_targets_follow_the_layers_grid() -> None:
    """relu4_2 holds 512 channels at stride 8: 32 B per output pixel; relu1_1 64 at stride 1: 256 B."""
    assert memory.content_target_bytes_per_px(("relu4_2",)) == 32
    assert memory.content_target_bytes_per_px(("relu1_1", "relu4_2")) == 256 + 32
    assert memory.content_target_bytes_per_px(("something_else",)) == 256  # unknown: counted as the largest


@pytest.mark.parametrize(
    ("text", "size"),
    [("6G", 6 * GIB), ("512M", 512 * MIB), ("1.5GiB", 3 * GIB // 2), ("3000000000", 3_000_000_000), ("64k", 65536)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "6X", "-1G", "0"])
def test_parse_size_refuses_what_is_no_size(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_the_default_is_a_share_of_the_cgroup_limit_else_of_physical_memory(tmp_path: Path) -> None:
    """cgroup v2's memory.max as a number is the limit; "max" (unlimited) falls back to the machine's memory."""
    (tmp_path / "memory.max").write_text("8589934592\n")
    assert memory.default_max_memory(tmp_path) == (int(8 * GIB * 0.8), "80% of the cgroup limit")
    (tmp_path / "memory.max").write_text("max\n")
    total, source = memory.default_max_memory(tmp_path)
    assert (total, source) == (int(memory.physical_memory() * 0.8), "80% of physical memory")
    (tmp_path / "memory.max").unlink()
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(str(4 * GIB))  # cgroup v1
    assert memory.cgroup_limit(tmp_path) == 4 * GIB
