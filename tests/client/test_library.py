"""The `nst_client` library against a real server process, and against a tiny recording gRPC server."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from nst_client import (
    Preview,
    Progress,
    Result,
    ScaleStarted,
    ServerInfo,
    Started,
    Style,
    StyleClient,
    StyleTransferError,
)
from nst_server.testing import InProcessServer
from PIL import Image

from tests.client.support import (
    Inputs,
    Recorder,
    RecordingServer,
    free_port,
    self_signed,
    serve_recorder,
)

LONG_JOB = {"max_side_px": 128, "max_evaluations": 5000, "optimizer": "adam"}


@pytest.fixture(name="client", scope="module")
def _client(server: InProcessServer) -> Iterator[StyleClient]:
    with StyleClient(server.address) as client:
        yield client


def test_stream_of_events(client: StyleClient, inputs: Inputs) -> None:
    """stylize yields Started, one Progress per iteration with a Preview every N, and a Result last."""
    call = client.stylize(inputs.content, inputs.style, max_side_px=64, max_evaluations=4, optimizer="adam",
                          preview_every=2, timeout_s=120)  # fmt: skip
    events = list(call)
    assert isinstance(events[0], Started)
    assert (events[0].width, events[0].height, events[0].max_evaluations, events[0].optimizer) == (64, 48, 4, "adam")
    assert [e.iteration for e in events if isinstance(e, Progress)] == [1, 2, 3, 4]
    previews = [e for e in events if isinstance(e, Preview)]
    assert [p.iteration for p in previews] == [2, 4]
    assert previews[0].to_image().size == (64, 48)
    result = events[-1]
    assert isinstance(result, Result)
    assert (result.format, result.width, result.height, result.evaluations) == ("png", 64, 48, 4)
    assert result.to_image().size == (64, 48)
    assert result.timings.total_s > 0


def _as(kind: str, path: Path) -> Any:
    if kind == "path":
        return path
    if kind == "str":
        return str(path)
    if kind == "bytes":
        return path.read_bytes()
    image = Image.open(path).convert("RGB")
    if kind == "pil":
        return image
    array = np.asarray(image)
    return array if kind == "uint8-array" else array.astype(np.float32) / 255


@pytest.mark.parametrize("kind", ["path", "str", "bytes", "pil", "uint8-array", "float-array"])
def test_image_inputs(client: StyleClient, inputs: Inputs, kind: str) -> None:
    """Content and styles may be paths, bytes, PIL images or numpy arrays; stylize_image returns the PIL result."""
    image = client.stylize_image(_as(kind, inputs.content), [_as(kind, inputs.style)], max_side_px=64,
                                 max_evaluations=2, optimizer="adam", output_format="jpeg")  # fmt: skip
    assert isinstance(image, Image.Image)
    assert (image.format, image.size) == ("JPEG", (64, 48))


@pytest.mark.slow  # seconds: a job run until the caller breaks out
def test_breaking_out_cancels_the_job(client: StyleClient, server: InProcessServer, inputs: Inputs) -> None:
    """Leaving the event loop early cancels the RPC: the server logs outcome=cancelled and its one slot frees."""
    before = server.outcomes()
    for event in client.stylize(inputs.content, inputs.style, **LONG_JOB):
        if isinstance(event, Progress):
            break
    server.wait_outcome("cancelled", since=before)
    assert client.stylize_image(inputs.content, inputs.style, max_side_px=64, max_evaluations=2).size == (64, 48)


def test_cancel_raises_cancelled(client: StyleClient, server: InProcessServer, inputs: Inputs) -> None:
    """After call.cancel() the iterator raises StyleTransferError with CANCELLED, and the server stops the job."""
    before = server.outcomes()
    call = client.stylize(inputs.content, inputs.style, **LONG_JOB)
    events = iter(call)
    assert isinstance(next(events), Started)
    call.cancel()
    with pytest.raises(StyleTransferError) as error:
        list(events)
    assert error.value.code == grpc.StatusCode.CANCELLED
    server.wait_outcome("cancelled", since=before)


@pytest.mark.slow  # waits for a deadline to pass
def test_deadline_passes_through(client: StyleClient, inputs: Inputs) -> None:
    """A job past timeout_s ends with DEADLINE_EXCEEDED, and the next job runs."""
    with pytest.raises(StyleTransferError) as error:
        list(client.stylize(inputs.content, inputs.style, timeout_s=2, **LONG_JOB))
    assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.stylize_image(inputs.content, inputs.style, max_side_px=64, max_evaluations=2).size == (64, 48)


@pytest.mark.parametrize(
    ("content", "options", "message"),
    [
        (None, {"max_evaluations": 999_999_999}, "options.max_evaluations: 999999999 is out of range"),
        (b"not an image", {}, "content_image: not an image"),
        (None, {"model": "picasso"}, "model: 'picasso' is not loaded"),
    ],
    ids=["over-the-limit", "undecodable", "unknown-model"],
)
def test_server_errors(client: StyleClient, inputs: Inputs, content: bytes | None, options: Any, message: str) -> None:
    """A refused request raises StyleTransferError with INVALID_ARGUMENT and the server's message."""
    with pytest.raises(StyleTransferError) as error:
        list(client.stylize(content or inputs.content, inputs.style, max_side_px=64, **options))
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.message
    assert message in str(error.value)


def test_describe_and_health(client: StyleClient, model_dir: Path) -> None:
    """describe() returns plain dataclasses of the model and limits; health() returns SERVING."""
    info = client.describe(timeout_s=30)
    assert isinstance(info, ServerInfo)
    assert dataclasses.is_dataclass(info.limits)
    (model,) = info.models
    assert (model.name, model.weights, model.pooling, model.device) == (model_dir.name, "random", "max", "cpu")
    assert model.style_layers == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    assert model.default_style_weight == 1e6
    assert (model.recipe.startswith("He-initialised"), model.seed) == (True, 3)
    assert (info.limits.max_concurrent, info.limits.max_queue, info.limits.max_evaluations) == (1, 1, 5000)
    assert info.limits.max_regions == 4
    assert client.health(timeout_s=30) == "SERVING"
    assert client.health("", timeout_s=30) == "SERVING"


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("optimizer", "sgd", "'lbfgs', 'adam'"),
        ("init", "random", "'content', 'gray', 'noise'"),
        ("output_format", "gif", "'png', 'jpeg', 'webp'"),
    ],
)
def test_bad_option_strings(client: StyleClient, inputs: Inputs, option: str, value: str, allowed: str) -> None:
    """An option string outside its choices raises ValueError naming the allowed values, before any call."""
    with pytest.raises(ValueError, match=allowed):
        client.stylize(inputs.content, inputs.style, **{option: value})


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8), np.uint8), "HxWx3"),
        (np.full((8, 8, 3), 2.0), r"\[0, 1\]"),
        (np.zeros((8, 8, 3), np.int64), "uint8 or float"),
    ],
)
def test_bad_arrays(client: StyleClient, inputs: Inputs, image: Any, message: str) -> None:
    """Arrays that are not HxWx3 uint8 or float in [0, 1] raise ValueError."""
    with pytest.raises(ValueError, match=message):
        client.stylize(image, inputs.style)


def test_missing_file_raises_oserror(client: StyleClient, inputs: Inputs, tmp_path: Path) -> None:
    """A path that does not exist raises FileNotFoundError when the job is requested."""
    with pytest.raises(FileNotFoundError):
        client.stylize(tmp_path / "absent.png", inputs.style)


@pytest.mark.slow  # gRPC's retry backoff runs its course: seconds
def test_unreachable_server_is_unavailable() -> None:
    """A call to a port nobody listens on raises StyleTransferError with UNAVAILABLE once retries are spent."""
    with StyleClient(f"127.0.0.1:{free_port()}") as client, pytest.raises(StyleTransferError) as error:
        client.describe(timeout_s=30)
    assert error.value.code == grpc.StatusCode.UNAVAILABLE


def test_transient_unavailable_is_retried() -> None:
    """UNAVAILABLE before the first event is retried transparently by gRPC's retry policy."""
    for served in serve_recorder(Recorder(fail_first=2)):
        with StyleClient(served.address) as client:
            events = list(client.stylize(b"content", b"style", timeout_s=60))
        assert isinstance(events[-1], Result)
        assert len(served.recorder.calls) == 3


def test_no_retry_once_started() -> None:
    """UNAVAILABLE after the job has started is not retried: the caller gets it, and the job ran once."""
    for served in serve_recorder(Recorder(fail_after_start=True)):
        with StyleClient(served.address) as client, pytest.raises(StyleTransferError) as error:
            list(client.stylize(b"content", b"style", timeout_s=60))
        assert (error.value.code, error.value.message) == (grpc.StatusCode.UNAVAILABLE, "lost the worker")
        assert len(served.recorder.calls) == 1


def test_token_sent_as_bearer_metadata(recording: RecordingServer) -> None:
    """On plaintext the token reaches the server as `authorization: Bearer <token>` on unary and streaming calls."""
    with StyleClient(recording.address, token="s3cret") as client:
        client.describe(timeout_s=30)
        list(client.stylize(b"content", b"style", timeout_s=30))
    assert [call["authorization"] for call in recording.recorder.calls] == ["Bearer s3cret"] * 2


def test_token_over_tls(tmp_path: Path) -> None:
    """With TLS the token travels as call credentials and arrives as `authorization: Bearer <token>`."""
    cert, key = (path.read_bytes() for path in self_signed(tmp_path))
    for served in serve_recorder(Recorder(), grpc.ssl_server_credentials([(key, cert)])):
        with StyleClient(served.address, tls=True, root_certificates=cert, token="tls-token") as client:
            client.describe(timeout_s=30)
        assert served.recorder.calls[-1]["authorization"] == "Bearer tls-token"


def test_import_pulls_no_server_stack() -> None:
    """Importing nst_client (and its CLI) loads neither onnxruntime, torch, scipy nor nst_server."""
    code = (
        "import sys, nst_client, nst_client.cli; "
        "print(sorted(m for m in ('onnxruntime', 'torch', 'scipy', 'nst_server') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_public_surface() -> None:
    """The public names are few, and no public signature mentions a generated protobuf type."""
    import nst_client

    assert set(nst_client.__all__) <= {n for n in dir(nst_client) if not n.startswith("_")}
    for name in ("describe", "health", "stylize", "stylize_image", "__init__"):
        signature = str(inspect.signature(getattr(StyleClient, name)))
        assert "pb" not in signature.replace("pb_", ""), signature
        assert "Raises:" in (getattr(StyleClient, name).__doc__ or ""), name
    parameters = set(inspect.signature(StyleClient.stylize).parameters)
    assert parameters == {"self", "content", "styles", "options", "timeout_s", "model", "fields"}
    assert str(inspect.signature(StyleClient.stylize_image)).startswith(
        str(inspect.signature(StyleClient.stylize))[:-14]
    )


QUICK = {"max_side_px": 64, "optimizer": "adam", "timeout_s": 120}


def test_texture_synthesis_has_the_requested_size(client: StyleClient, inputs: Inputs) -> None:
    """With no content image the server synthesises a width_px x height_px texture from the style alone."""
    result = client.stylize(None, inputs.style, width_px=48, height_px=40, max_evaluations=2, **QUICK).result()
    assert (result.width, result.height) == (48, 40)
    assert result.to_image().size == (48, 40)


def test_content_reconstruction_needs_no_style(client: StyleClient, inputs: Inputs) -> None:
    """With no styles the content alone is reconstructed; with neither image stylize raises ValueError naming both."""
    assert client.stylize_image(inputs.content, [], max_evaluations=2, **QUICK).size == (64, 48)
    with pytest.raises(ValueError, match="content, styles"):
        client.stylize(None, None)


def test_two_scales_announce_each_scale(client: StyleClient, inputs: Inputs) -> None:
    """A two-scale run reports scales=2 in Started, then ScaleStarted 1 and 2 in order, coarse one smaller."""
    events = list(client.stylize(inputs.content, inputs.style, scales=2, coarse_evaluations=2, max_evaluations=3,
                                 **QUICK))  # fmt: skip
    started = next(e for e in events if isinstance(e, Started))
    assert started.scales == 2
    scales = [e for e in events if isinstance(e, ScaleStarted)]
    assert [(s.scale, s.scales, s.max_evaluations) for s in scales] == [(1, 2, 2), (2, 2, 3)]
    assert scales[0].width < scales[1].width == 64
    result = events[-1]
    assert isinstance(result, Result)
    assert (result.width, result.height, result.evaluations) == (64, 48, 5)


@pytest.mark.slow  # seconds: jobs to the budget and to a plateau
def test_result_says_why_it_stopped_and_counts_full_size_evaluations(client: StyleClient, inputs: Inputs) -> None:
    """Result carries the stop reason (budget, or converged under min_improvement) and both evaluation counts."""
    spent = client.stylize(inputs.content, inputs.style, max_evaluations=3, **QUICK).result()
    assert (spent.stop_reason, spent.evaluations, spent.full_size_evaluations) == ("budget", 3, 3.0)
    plateau = client.stylize(inputs.content, inputs.style, max_evaluations=40, min_improvement=0.99, **QUICK).result()
    assert plateau.stop_reason == "converged"
    assert plateau.evaluations < 40


def test_blend_weights_one_and_zero_give_the_single_style(client: StyleClient, inputs: Inputs) -> None:
    """Styles blended with weights (1, 0) give the same image bytes as the first style alone."""
    other = Image.new("RGB", (64, 64), (200, 30, 30))
    options: Any = {"max_evaluations": 3, "init": "gray", **QUICK}
    alone = client.stylize(inputs.content, inputs.style, **options).result().image
    blended = client.stylize(
        inputs.content, [Style(inputs.style, blend_weight=1), Style(other, blend_weight=0)], **options
    ).result()
    assert blended.image == alone


def test_art_direction_options_run(client: StyleClient, inputs: Inputs) -> None:
    """Colour preservation, layer choices, a style scale and an init image are accepted and give a result."""
    image = client.stylize_image(
        inputs.content, Style(inputs.style, scale=0.75), colour_preservation="luminance", content_layers=["relu4_2"],
        style_layers=("relu1_1", "relu3_1"), style_layer_weights=[3, 1], init="image", init_image=inputs.style,
        max_evaluations=2, **QUICK,
    )  # fmt: skip
    assert image.size == (64, 48)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour_preservation": "sepia"}, "'none', 'luminance', 'histogram'"),
        ({"style_layers": "relu1_1"}, "style_layers: expected a sequence"),
        ({"content_layers": [4]}, "content_layers: expected non-empty strings"),
        ({"style_layer_weights": [1.0, float("nan")]}, "style_layer_weights: expected finite numbers"),
        ({"init": "image", "init_image": 3}, "init_image: expected a path"),
    ],
    ids=["colour", "layers-not-a-sequence", "layer-not-a-string", "nan-weight", "init-image"],
)
def test_bad_art_direction_values(client: StyleClient, inputs: Inputs, options: Any, message: str) -> None:
    """Bad art-direction values raise ValueError (TypeError for a non-image) before any call."""
    with pytest.raises((ValueError, TypeError), match=message):
        client.stylize(inputs.content, inputs.style, **options)
    with pytest.raises(ValueError, match="blend_weight"):
        client.stylize(inputs.content, Style(inputs.style, blend_weight=float("inf")))


def test_dns_target_with_round_robin(server: InProcessServer) -> None:
    """A dns:/// target works with the round-robin service config (one address: the same as pick_first)."""
    port = server.address.rsplit(":", 1)[1]
    with StyleClient(f"dns:///localhost:{port}") as client:
        assert client.health(timeout_s=30) == "SERVING"
