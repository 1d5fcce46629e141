"""The real `nst` CLI, run as a subprocess against a real server process on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from nst_client.cli import main
from nst_server.testing import InProcessServer
from PIL import Image

from tests.client.support import Inputs, RecordingServer, cli_env, free_port, nst

QUICK = ("--size", "64", "--optimizer", "adam", "--iterations")  # 64 px and Adam: one evaluation per iteration


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("nst: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(("suffix", "pil_format"), [(".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP")])
def test_writes_the_styled_image(
    server: InProcessServer, inputs: Inputs, tmp_path: Path, suffix: str, pil_format: str
) -> None:
    """The output file is in OUT's format, its longest side is --size and it keeps the content's 4:3 aspect ratio."""
    out = tmp_path / f"styled{suffix}"
    done = nst("stylize", inputs.content, inputs.style, "-o", out, "--server", server.address, *QUICK, "3")
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")  # --progress defaults to none off a terminal
    with Image.open(out) as image:
        assert (image.format, image.size) == (pil_format, (64, 48))
    assert os.listdir(tmp_path) == [out.name]  # no temporary file left behind


def test_json_progress_lines(server: InProcessServer, inputs: Inputs, tmp_path: Path) -> None:
    """With --progress json every stdout line is a JSON event: started, scale_started, progress 1, 2, 3..., result."""
    out = tmp_path / "styled.png"
    done = nst("stylize", inputs.content, inputs.style, "-o", out, "--server", server.address, *QUICK, "5",
               "--progress", "json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["event"] for e in events] == ["started", "scale_started"] + ["progress"] * 5 + ["result"]
    progress = [e for e in events if e["event"] == "progress"]
    assert [p["iteration"] for p in progress] == [1, 2, 3, 4, 5]
    assert [p["evaluations"] for p in progress] == [1, 2, 3, 4, 5]
    assert all({"total", "content", "style", "tv", "elapsed_s"} <= p.keys() for p in progress)
    result = events[-1]
    assert (result["path"], result["width"], result["height"], result["evaluations"]) == (str(out), 64, 48, 5)
    assert result["losses"]["total"] == progress[-1]["total"]
    assert out.is_file()


def test_save_every_writes_previews(server: InProcessServer, inputs: Inputs, tmp_path: Path) -> None:
    """--save-every 2 writes the previews of iterations 2, 4 and 6 next to OUT as OUT_STEM.iterNNNN.EXT."""
    out = tmp_path / "styled.jpg"
    done = nst("stylize", inputs.content, inputs.style, "-o", out, "--server", server.address, *QUICK, "6",
               "--save-every", "2", "--progress", "json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    previews = ["styled.iter0002.jpg", "styled.iter0004.jpg", "styled.iter0006.jpg"]
    assert sorted(os.listdir(tmp_path)) == sorted([*previews, "styled.jpg"])
    for name in previews:
        with Image.open(tmp_path / name) as image:
            assert (image.format, image.size) == ("JPEG", (64, 48))
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["path"] for line in lines if line["event"] == "preview"] == [str(tmp_path / n) for n in previews]


@pytest.mark.slow  # seconds: a job run until interrupted, or gRPC's retry backoff
def test_unreachable_server(inputs: Inputs, tmp_path: Path) -> None:
    """With nobody listening the CLI exits 1 with one stderr line naming the address, after gRPC's retries end."""
    address = f"127.0.0.1:{free_port()}"
    done = nst("stylize", inputs.content, inputs.style, "-o", tmp_path / "out.png", "--server", address, timeout_s=60)
    assert done.returncode == 1
    assert address in _one_error_line(done.stderr)
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("missing", ["content", "style"])
def test_missing_input_file(inputs: Inputs, tmp_path: Path, recording: RecordingServer, missing: str) -> None:
    """A missing input file exits 1 with one line naming it, before any call to the server."""
    absent = tmp_path / "absent.png"
    files = (absent, inputs.style) if missing == "content" else (inputs.content, absent)
    done = nst("stylize", *files, "-o", tmp_path / "out.png", "--server", recording.address)
    assert done.returncode == 1
    line = _one_error_line(done.stderr)
    assert str(absent) in line
    assert "No such file" in line
    assert recording.recorder.calls == []


@pytest.mark.parametrize(
    ("flags", "content_bytes", "message"),
    [
        (("--iterations", "999999999"), None, "options.max_evaluations: 999999999 is out of range"),
        ((), b"not an image at all", "content_image: not an image"),
    ],
    ids=["over-the-limit", "undecodable"],
)
def test_rejected_request(
    server: InProcessServer, inputs: Inputs, tmp_path: Path, flags: tuple[str, ...], content_bytes: bytes | None,
    message: str,
) -> None:  # fmt: skip
    """A request the server refuses exits 1 with the server's message on one stderr line and writes nothing."""
    content = inputs.content
    if content_bytes is not None:
        content = tmp_path / "content.png"
        content.write_bytes(content_bytes)
    out = tmp_path / "out.png"
    done = nst("stylize", content, inputs.style, "-o", out, "--server", server.address, "--size", "64", *flags)
    assert done.returncode == 1
    assert message in _one_error_line(done.stderr)
    assert not out.exists()


def test_bad_extension_is_a_usage_error(inputs: Inputs, tmp_path: Path, recording: RecordingServer) -> None:
    """An OUT extension other than .png/.jpg/.jpeg/.webp exits 2 without contacting the server."""
    done = nst("stylize", inputs.content, inputs.style, "-o", tmp_path / "out.gif", "--server", recording.address)
    assert done.returncode == 2
    assert "OUT must end in .png, .jpg, .jpeg, .webp" in done.stderr
    assert "Traceback" not in done.stderr
    assert recording.recorder.calls == []


def test_bad_flag_is_a_usage_error(inputs: Inputs, tmp_path: Path) -> None:
    """An optimizer outside the choices exits 2 with argparse's message."""
    done = nst("stylize", inputs.content, inputs.style, "-o", tmp_path / "out.png", "--optimizer", "sgd")
    assert done.returncode == 2
    assert "invalid choice: 'sgd'" in done.stderr


# A shell starts background jobs with SIGINT ignored, children inherit that, and Python then leaves it ignored; a
# terminal's Ctrl-C does not. This launcher restores Python's handler in the CLI's own process. (A preexec_fn would
# run Python in a fork of this gRPC process, whose event engine can then write its own errors to the CLI's stderr.)
_AS_ON_A_TERMINAL = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from nst_client.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.slow  # seconds: a job run until interrupted, or gRPC's retry backoff
def test_interrupt_cancels_the_job(server: InProcessServer, inputs: Inputs, tmp_path: Path) -> None:
    """SIGINT exits 130, the server cancels the job, and its only slot then serves the next job."""
    before = server.outcomes()
    out = tmp_path / "long.png"
    command = [sys.executable, "-c", _AS_ON_A_TERMINAL, "stylize", str(inputs.content), str(inputs.style), "-o",
               str(out), "--server", server.address, "--size", "128", "--optimizer", "adam", "--iterations", "5000",
               "--progress", "json"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=cli_env())  # fmt: skip
    watchdog = threading.Timer(120, process.kill)  # bounds the blocking readline below
    watchdog.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if json.loads(line)["event"] == "progress":
                break
        else:
            pytest.fail(f"no progress line before the CLI ended: {process.wait()} {process.communicate()[1]}")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        watchdog.cancel()
        process.kill() if process.poll() is None else None
    assert process.returncode == 130
    assert stderr == "nst: interrupted; job cancelled\n"
    server.wait_outcome("cancelled", since=before)
    assert os.listdir(tmp_path) == []  # neither the output nor a temporary file

    after = nst("stylize", inputs.content, inputs.style, "-o", out, "--server", server.address, *QUICK, "2")
    assert after.returncode == 0, after.stderr
    assert out.is_file()


@pytest.mark.slow  # seconds: CLI processes against a server
def test_info_and_health(server: InProcessServer, model_dir: Path) -> None:
    """`nst info --json` describes the served model and its limits; `nst health` prints SERVING and exits 0."""
    info = nst("info", "--json", "--server", server.address)
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert [m["name"] for m in described["models"]] == [model_dir.name]
    assert (described["limits"]["max_concurrent"], described["limits"]["max_queue"]) == (1, 1)
    human = nst("info", "--server", server.address)
    assert f"model {model_dir.name} (default)" in human.stdout
    assert "  seed           3\n" in human.stdout
    assert "4 masked styles" in human.stdout
    health = nst("health", "--server", server.address)
    assert (health.returncode, health.stdout) == (0, "SERVING\n")


def test_token_file_is_sent_as_bearer(recording: RecordingServer, tmp_path: Path) -> None:
    """--token-file's content (stripped) reaches the server as `authorization: Bearer <token>`."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    done = nst("info", "--server", recording.address, "--token-file", token_file)
    assert done.returncode == 0, done.stderr
    assert recording.recorder.calls[-1]["authorization"] == "Bearer s3cret-token"


@pytest.mark.slow  # seconds: CLI processes against a server
def test_scales_print_scale_started_lines(server: InProcessServer, inputs: Inputs, tmp_path: Path) -> None:
    """--scales 2 --progress json prints a scale_started line for each scale, before that scale's progress."""
    out = tmp_path / "styled.png"
    done = nst("stylize", inputs.content, inputs.style, "-o", out, "--server", server.address, *QUICK, "3",
               "--scales", "2", "--coarse-iterations", "2", "--progress", "json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["event"] for e in events] == ["started", "scale_started", *["progress"] * 2, "scale_started",
                                            *["progress"] * 3, "result"]  # fmt: skip
    assert events[0]["scales"] == 2
    scales = [e for e in events if e["event"] == "scale_started"]
    assert [(s["scale"], s["scales"], s["max_evaluations"]) for s in scales] == [(1, 2, 2), (2, 2, 3)]
    assert (scales[1]["width"], scales[1]["height"]) == (64, 48)


@pytest.mark.slow  # seconds: a CLI process and a job of several scales or many evaluations
def test_min_improvement_stops_early_and_says_so(server: InProcessServer, inputs: Inputs, tmp_path: Path) -> None:
    """--min-improvement 0.99 ends the job on its first plateau check; the result line says converged."""
    out = tmp_path / "styled.png"
    done = nst("stylize", inputs.content, inputs.style, "-o", out, "--server", server.address, *QUICK, "40",
               "--min-improvement", "0.99", "--progress", "json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["stop_reason"] == "converged"
    assert result["evaluations"] < 40


def test_texture_writes_the_requested_size(server: InProcessServer, inputs: Inputs, tmp_path: Path) -> None:
    """--texture with --width 48 --height 40 treats CONTENT as a style and writes a 48x40 texture."""
    out = tmp_path / "texture.png"
    done = nst("stylize", "--texture", inputs.style, "-o", out, "--server", server.address, *QUICK, "2",
               "--width", "48", "--height", "40")  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        assert image.size == (48, 40)


def test_art_direction_flags(server: InProcessServer, inputs: Inputs, tmp_path: Path) -> None:
    """--preserve-colour, layer lists, style weights and scale and --init image are sent and the job succeeds."""
    out = tmp_path / "styled.png"
    done = nst("stylize", inputs.content, inputs.style, inputs.style, "-o", out, "--server", server.address, *QUICK,
               "2", "--preserve-colour", "luminance", "--content-layers", "relu4_2", "--style-layers",
               "relu1_1,relu3_1", "--style-layer-weights", "3,1", "--blend-weights", "0.7,0.3", "--style-scale",
               "0.75", "--init", "image", "--init-image", inputs.style)  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        assert image.size == (64, 48)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--blend-weights", "1,2"), "--blend-weights: 2 weights for 1 style(s)"),
        (("--blend-weights", "1,x"), "not a number: 'x'"),
        (("--init-image", "x.png"), "--init image and --init-image PATH go together"),
    ],
    ids=["count", "not-a-number", "init-image-alone"],
)
def test_bad_art_flags_are_usage_errors(
    inputs: Inputs, tmp_path: Path, recording: RecordingServer, flags: tuple[str, ...], message: str
) -> None:
    """A wrong --blend-weights count or value, or --init-image without --init image, exits 2 without a call."""
    done = nst("stylize", inputs.content, inputs.style, "-o", tmp_path / "out.png", "--server", recording.address,
               *flags)  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert recording.recorder.calls == []


def _masks(folder: Path) -> tuple[Path, Path, Path, Path]:
    """Left and right style masks, a source mask and a content-only strip (8 px on the left), at 80x60 and 64x64."""
    columns = np.arange(80)
    paths = []
    for name, white in (("left", (columns >= 8) & (columns < 40)), ("right", columns >= 40), ("strip", columns < 8)):
        pixels = np.repeat(np.where(white, 255, 0).astype(np.uint8)[np.newaxis], 60, axis=0)
        Image.fromarray(pixels, "L").save(folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    source = np.zeros((64, 64), np.uint8)
    source[:, :32] = 255
    Image.fromarray(source, "L").save(folder / "source.png")
    left, right, strip = paths
    return left, right, folder / "source.png", strip


def test_spatial_flags_reach_the_request(inputs: Inputs, tmp_path: Path, recording: RecordingServer) -> None:
    """--style-masks (one per STYLE), --source-masks (an empty entry: the whole style), --content-only-mask and
    --tileable are sent as the request's fields, byte for byte (in-process: no job needed)."""
    left, right, source, strip = _masks(tmp_path)
    code = main(["stylize", str(inputs.content), str(inputs.style), str(inputs.style), "-o", str(tmp_path / "o.png"),
                 "--server", recording.address, "--style-masks", f"{left},{right}", "--source-masks", f",{source}",
                 "--content-only-mask", str(strip), "--tileable"])  # fmt: skip
    assert code == 0
    (request,) = recording.recorder.requests
    assert [s.mask for s in request.style_images] == [left.read_bytes(), right.read_bytes()]
    assert [s.source_mask for s in request.style_images] == [b"", source.read_bytes()]
    assert (request.options.content_only_mask, request.options.tileable) == (strip.read_bytes(), True)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--style-masks", "a.png"), "--style-masks: 1 masks for 2 style(s); give one per STYLE"),
        (("--source-masks", "a.png,b.png,c.png"), "--source-masks: 3 masks for 2 style(s)"),
        (("--style-masks", "a.png,"), "--style-masks: expected comma-separated paths"),
        (("--source-masks", ","), "--source-masks: expected at least one path"),
    ],
    ids=["style-count", "source-count", "style-empty", "source-none"],
)
def test_bad_mask_flags_are_usage_errors(
    inputs: Inputs, tmp_path: Path, recording: RecordingServer, flags: tuple[str, ...], message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A mask count that is not one per STYLE, or an empty list, exits 2 before any call (in-process)."""
    with pytest.raises(SystemExit) as exit_:
        main(["stylize", str(inputs.content), str(inputs.style), str(inputs.style), "-o", str(tmp_path / "out.png"),
              "--server", recording.address, *flags])  # fmt: skip
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert recording.recorder.calls == []


@pytest.mark.slow  # seconds: a CLI process and a job of several scales or many evaluations
def test_masks_end_to_end(server: InProcessServer, inputs: Inputs, tmp_path: Path) -> None:
    """The real server takes the CLI's masks: the content-only strip comes back as the photo, the rest does not."""
    left, right, source, strip = _masks(tmp_path)
    out = tmp_path / "masked.png"
    done = nst("stylize", inputs.content, inputs.style, inputs.style, "-o", out, "--server", server.address, *QUICK,
               "4", "--learning-rate", "0.1", "--style-masks", f"{left},{right}", "--source-masks", f",{source}",
               "--content-only-mask", strip, "--tileable")  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Image.open(out) as image, Image.open(inputs.content) as photo:
        got = np.asarray(image.convert("RGB"), np.float32)
        want = np.asarray(photo.convert("RGB").resize((64, 48), Image.Resampling.LANCZOS), np.float32)
    assert got.shape == (48, 64, 3)
    assert np.abs(got[:, :5] - want[:, :5]).max() <= 1.0  # the strip (6.4 px at 64 px wide): the photo
    assert np.abs(got[:, 16:] - want[:, 16:]).mean() > 5.0  # elsewhere: styled


def test_unknown_layer_is_refused_on_one_line(server: InProcessServer, inputs: Inputs, tmp_path: Path) -> None:
    """A layer the model lacks is the server's INVALID_ARGUMENT: exit 1, one clean stderr line."""
    done = nst("stylize", inputs.content, inputs.style, "-o", tmp_path / "out.png", "--server", server.address,
               *QUICK, "2", "--style-layers", "relu9_9")  # fmt: skip
    assert done.returncode == 1
    assert "server refused the job" in _one_error_line(done.stderr)


def test_bar_follows_the_scales(tmp_path: Path) -> None:
    """In bar mode each ScaleStarted extends the bar's total by its budget and names the scale."""
    import io

    from nst_client import Losses, Progress, ScaleStarted, Started
    from nst_client.cli import _Reporter

    stderr = io.StringIO()
    with _Reporter("bar", tmp_path / "out.png", io.StringIO(), stderr) as reporter:
        reporter.handle(Started("j", "m", 64, 48, 3, "adam", "cpu", 2))
        steps = [Progress(i, i, Losses(1, 1, 1, 1), 0.1) for i in range(1, 6)]
        for event in (ScaleStarted(1, 2, 45, 34, 2), *steps[:2], ScaleStarted(2, 2, 64, 48, 3), *steps[2:]):
            reporter.handle(event)
        assert (reporter._bar.n, reporter._bar.total) == (5, 5)
    assert "scale 1/2" in stderr.getvalue()
    assert "scale 2/2" in stderr.getvalue()
