"""Large outputs through the real server: exact tiled evaluation keeps memory to the tile size, not the image's."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst_server.testing import start_server
from PIL import Image

from tests.images import encoded, picture
from tests.requests import events, status_of

PEAK_RSS_LIMIT_BYTES = 2.5e9  # the bound for a 2048x1536 job of 3 evaluations at the default tile size


def _large_request(width: int, height: int, evaluations: int) -> pb.StylizeRequest:
    return pb.StylizeRequest(
        content_image=encoded(picture(width, height, seed=1)),
        style_images=[pb.StyleImage(image=encoded(picture(256, 192, seed=2)))],
        # One scale: every evaluation at this size, not the server's coarse-to-fine schedule (which would spend the
        # budget's full-size equivalents mostly at smaller sizes).
        options=pb.StylizeOptions(max_side_px=max(width, height), max_evaluations=evaluations, scales=1),
    )


@pytest.mark.slow
@pytest.mark.large
def test_2048x1536_job_peak_rss_is_bounded_by_the_tile(model_dir: Path) -> None:
    """Three L-BFGS evaluations at 2048x1536 (the style taken at that size too), server defaults: peak RSS <= 2.5 GB.

    Whole, a job at this size peaked at 11.9 GB (`python -m bench.large`, BENCHMARKS.md).
    Marked large: many minutes on the 2-core development machine. Prints the peak and the seconds per evaluation for
    BENCHMARKS.md (run with -s to see them).
    """
    server = start_server([model_dir])
    try:
        # The result, a 2048x1536 PNG of a noisy picture, is over gRPC's default 4 MiB receive limit (4.5 MB).
        unlimited = [("grpc.max_receive_message_length", -1)]
        with grpc.insecure_channel(server.address, options=unlimited) as channel:
            stub = pb_grpc.StyleTransferServiceStub(channel)
            stream = events(stub.Stylize(_large_request(2048, 1536, 3), timeout=1800))
        kind, result = stream[-1]
        assert kind == "result", stream[-1]
        assert isinstance(result, pb.Result)
        assert (result.width, result.height) == (2048, 1536)
        peak = server.memory_mib("VmHWM") * 2**20
        print(
            f"\n2048x1536, {result.evaluations} evaluations: server peak RSS {peak / 1e9:.2f} GB, "
            f"{result.timings.evaluate_s / result.evaluations:.0f} s per evaluation; "
            f"loadavg {Path('/proc/loadavg').read_text().split()[:3]}"
        )
        assert result.evaluations == 3
        assert peak <= PEAK_RSS_LIMIT_BYTES, f"peak RSS {peak / 1e9:.2f} GB"
    finally:
        assert server.terminate() == 0


@pytest.mark.slow  # tiled jobs above the tile size: tens of seconds on 2 cores
@pytest.mark.parametrize("colour", [pb.COLOUR_PRESERVATION_LUMINANCE, pb.COLOUR_PRESERVATION_HISTOGRAM])
def test_art_options_keep_working_in_tiles(model_dir: Path, colour: int) -> None:
    """Coarse to fine across the whole-image size (the coarse scale whole, the fine one tiled), previews, colour
    modes. 256 px tiles: whole up to 256 + 2 x 160 = 576 px."""
    server = start_server([model_dir], "--tile-size", "256")
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.StyleTransferServiceStub(channel)
            request = _large_request(640, 426, 6)
            request.options.scales = 2
            request.options.coarse_evaluations = 2
            request.options.preview_every = 1
            request.options.colour_preservation = colour  # type: ignore[assignment]
            stream = events(stub.Stylize(request, timeout=600))
        kinds = [kind for kind, _ in stream]
        assert kinds[-1] == "result", stream[-1]
        assert "preview" in kinds
        scales = [(m.width, m.height) for kind, m in stream if kind == "scale_started"]  # type: ignore[attr-defined]
        assert scales == [(453, 301), (640, 426)]  # the first evaluated whole, the second in tiles
        result = stream[-1][1]
        assert isinstance(result, pb.Result)
        assert (result.width, result.height) == (640, 426)
        with Image.open(io.BytesIO(result.image)) as image:
            assert image.size == (640, 426)
    finally:
        assert server.terminate() == 0


@pytest.mark.slow  # tiled jobs above the tile size: tens of seconds on 2 cores
def test_sizes_over_max_side_are_refused_naming_the_limit(model_dir: Path) -> None:
    """With tiling on, --max-side defaults to 4096; over it is INVALID_ARGUMENT with the limit in the message."""
    server = start_server([model_dir])
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.StyleTransferServiceStub(channel)
            request = pb.StylizeRequest(
                style_images=[pb.StyleImage(image=encoded(picture(64, 64, seed=2)))],
                options=pb.StylizeOptions(width_px=4097, height_px=64, max_evaluations=1),
            )
            code, message = status_of(stub.Stylize(request, timeout=60))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "4097" in message, message
        assert "4096" in message, message
    finally:
        assert server.terminate() == 0


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--tile-size", "100"), "multiple of 16"),
        # A server process each (about a second): the quick loop keeps the first.
        pytest.param(("--tile-size", "32"), "at least 64", marks=pytest.mark.slow),
        pytest.param(("--tile-size", "-16"), "multiple of 16", marks=pytest.mark.slow),
        pytest.param(("--max-side", "0"), "--max-side must be at least 1", marks=pytest.mark.slow),
    ],
)
def test_tile_flags_that_make_no_sense_are_usage_errors(model_dir: Path, flags: tuple[str, ...], named: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nst_server", "--model", str(model_dir), "--port", "0", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert named in done.stderr


@pytest.mark.slow
@pytest.mark.large
def test_4096x3072_job_through_the_cli(model_dir: Path, tmp_path: Path) -> None:
    """The whole way at the largest default size: `nst stylize` against a server with its defaults, 2 evaluations
    (the first at the photo, the second one L-BFGS step: every part of a job at this size).

    Not in the default CI run (-m "not large"); tens of minutes on the 2-core development machine. Prints the
    server's peak RSS and the job's time for BENCHMARKS.md (run with -s to see them).
    """
    content, style, out = tmp_path / "content.png", tmp_path / "style.png", tmp_path / "out.png"
    picture(4096, 3072, seed=1).save(content)
    picture(512, 384, seed=2).save(style)
    server = start_server([model_dir])
    try:
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "nst_client", "stylize", str(content), str(style), "-o", str(out),
             "--server", server.address, "--size", "4096", "--iterations", "2", "--scales", "1", "--progress", "json"],
            capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        seconds = time.perf_counter() - began
        assert done.returncode == 0, done.stderr
        with Image.open(out) as image:
            assert image.size == (4096, 3072)
        peak = server.memory_mib("VmHWM")
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["event"] == "result"
        assert result["evaluations"] == 2
        timings = result["timings"]
        print(
            f"\n4096x3072, 2 evaluations through the CLI: {seconds:.0f} s in all (server: warm-up and targets "
            f"{timings['warmup_s']:.0f} s, {timings['evaluate_s'] / 2:.0f} s per evaluation), server peak RSS "
            f"{peak * 2**20 / 1e9:.2f} GB; loadavg {Path('/proc/loadavg').read_text().split()[:3]}"
        )
    finally:
        assert server.terminate() == 0
