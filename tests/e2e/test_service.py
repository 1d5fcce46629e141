"""The server over real gRPC: the stream, the losses, limits, bad input, health (in this process), and shutdown on
SIGTERM (a real `nst-server` process, for its signals and exit status)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst_server.testing import InProcessServer, running_server, start_server
from PIL import Image

from tests.images import encoded, picture, png, png_claiming_size
from tests.reference_losses import first_losses
from tests.requests import assert_serves
from tests.requests import events as _events
from tests.requests import stylize_request as _request

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(name="server", scope="module")
def _server(model_dir: Path) -> Iterator[InProcessServer]:
    limits = ("--max-concurrent", "1", "--max-queue", "1", "--max-evaluations", "100000")
    with running_server([model_dir], *limits, "--drain", "0") as server:
        yield server


@pytest.fixture(name="stub")
def _stub(server: InProcessServer) -> Iterator[pb_grpc.StyleTransferServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.StyleTransferServiceStub(channel)


def test_stream_order_previews_and_result(stub: pb_grpc.StyleTransferServiceStub) -> None:
    """started, one progress per iteration with previews every N, then a result of the requested size."""
    events = _events(stub.Stylize(_request(80, 60, max_side_px=64, max_evaluations=12, preview_every=4), timeout=120))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "started"
    assert kinds[-1] == "result"
    started, result = events[0][1], events[-1][1]
    assert (started.width, started.height, started.max_evaluations) == (64, 48, 12)
    progress = [event for kind, event in events if kind == "progress"]
    assert [p.iteration for p in progress] == list(range(1, len(progress) + 1))
    assert progress[-1].evaluations <= 12
    assert progress[-1].losses.total < progress[0].losses.total
    previews = [event for kind, event in events if kind == "preview"]
    assert [p.iteration for p in previews] == [i for i in range(1, len(progress) + 1) if i % 4 == 0]
    image = Image.open(io.BytesIO(result.image))
    assert (image.format, image.size) == ("PNG", (64, 48))
    assert (result.width, result.height, result.evaluations) == (64, 48, progress[-1].evaluations)
    assert result.losses.total == progress[-1].losses.total
    timings = result.timings  # the model's share of the loop is measured apart from the host's
    assert 0 < timings.evaluate_s < timings.optimise_s < timings.total_s


@pytest.mark.parametrize(("fmt", "pil_name"), [(pb.IMAGE_FORMAT_JPEG, "JPEG"), (pb.IMAGE_FORMAT_WEBP, "WEBP")])
def test_output_formats(stub: pb_grpc.StyleTransferServiceStub, fmt: int, pil_name: str) -> None:
    """The result is encoded in the requested format."""
    events = _events(stub.Stylize(_request(max_evaluations=2, output_format=fmt, optimizer=pb.OPTIMIZER_ADAM)))
    assert Image.open(io.BytesIO(events[-1][1].image)).format == pil_name


@pytest.mark.slow  # seconds: a PyTorch reference, or a deadline run out
def test_reported_loss_matches_pytorch(stub: pb_grpc.StyleTransferServiceStub, model_dir: Path) -> None:
    """The first evaluation's losses equal the export issue's formula computed independently in PyTorch."""
    content, style = picture(64, 48, seed=4), picture(64, 40, seed=5)  # already at the working size: no resampling
    request = pb.StylizeRequest(
        content_image=encoded(content), style_images=[pb.StyleImage(image=encoded(style))],
        options=pb.StylizeOptions(max_side_px=64, max_evaluations=1, optimizer=pb.OPTIMIZER_ADAM, content_weight=2.0,
                                  style_weight=3e5, tv_weight=5.0, init=pb.INIT_GRAY),
    )  # fmt: skip
    progress = next(event for kind, event in _events(stub.Stylize(request)) if kind == "progress")
    want = first_losses(content, [style], (2.0, 3e5, 5.0))
    got = progress.losses
    for name in ("total", "content", "style", "tv"):
        assert getattr(got, name) == pytest.approx(float(getattr(want, name)), rel=2e-5, abs=1e-12), name


def test_describe_model(stub: pb_grpc.StyleTransferServiceStub, model_dir: Path) -> None:
    """DescribeModel reports the weights (and how generated ones were made), pooling, layers, device, defaults and
    limits."""
    described = stub.DescribeModel(pb.DescribeModelRequest())
    (model,) = described.models
    assert (model.name, model.weights, model.pooling, model.device) == (model_dir.name, "random", "max", "cpu")
    assert list(model.style_layers) == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    assert model.default_style_weight == 1e6
    assert model.recipe.startswith("He-initialised")
    assert (model.HasField("seed"), model.seed) == (True, 3)  # conftest's model_dir
    assert (described.limits.max_concurrent, described.limits.max_queue, described.limits.max_regions) == (1, 1, 4)


def test_health_and_reflection(server: InProcessServer) -> None:
    """Health answers SERVING for the server and the service; reflection lists the service."""
    assert server.health() == SERVING
    assert server.health("nst.v1.StyleTransferService") == SERVING
    with grpc.insecure_channel(server.address) as channel:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]))
    names = {service.name for service in response.list_services_response.service}
    assert {"nst.v1.StyleTransferService", "grpc.health.v1.Health"} <= names


def _first_event(call: Iterator[pb.StylizeResponse]) -> str:
    return next(call).WhichOneof("event")


@pytest.mark.slow  # seconds: a job run until cancelled, then the next
def test_cancel_frees_the_slot_for_the_queue(stub: pb_grpc.StyleTransferServiceStub, server: InProcessServer) -> None:
    """With one slot and one queue place: a third call is refused; cancelling the first starts the second."""
    before = server.outcomes()
    long_job = _request(128, 128, max_side_px=128, max_evaluations=5000, optimizer=pb.OPTIMIZER_ADAM)
    first = stub.Stylize(long_job, timeout=300)
    assert _first_event(first) == "started"
    second = stub.Stylize(_request(max_evaluations=3), timeout=300)
    response = next(second)
    assert response.WhichOneof("event") == "queued"
    assert response.queued.position == 1

    with pytest.raises(grpc.RpcError) as refused:
        list(stub.Stylize(_request(max_evaluations=3), timeout=60))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-queue 1" in refused.value.details()

    first.cancel()
    kinds = [kind for kind, _ in _events(second)]
    assert kinds[0] == "started"
    assert kinds[-1] == "result"
    server.wait_outcome("cancelled", since=before)


@pytest.mark.slow  # seconds: a PyTorch reference, or a deadline run out
def test_deadline_stops_the_job(stub: pb_grpc.StyleTransferServiceStub, server: InProcessServer) -> None:
    """A call past its deadline ends DEADLINE_EXCEEDED and its slot serves the next job."""
    long_job = _request(128, 128, max_side_px=128, max_evaluations=5000, optimizer=pb.OPTIMIZER_ADAM)
    with pytest.raises(grpc.RpcError) as expired:
        list(stub.Stylize(long_job, timeout=3))
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _events(stub.Stylize(_request(max_evaluations=2), timeout=60))[-1][0] == "result"


def _truncated_jpeg() -> bytes:
    return encoded(picture(64, 64, 3), "JPEG")[:300]


BAD_REQUESTS = {
    "undecodable": (dict(content_image=b"not an image"), "content_image: not an image"),
    "nothing": (dict(content_image=b"", style_images=[]), "content_image, style_images: both empty"),
    "truncated-png": (dict(content_image=png(64, 64)[:200]), "content_image: not a decodable image"),
    "truncated-jpeg": (dict(content_image=_truncated_jpeg()), "content_image: not a decodable image"),
    "bomb": (dict(content_image=png_claiming_size(50000, 50000)), "2500000000 pixels"),
    "content-init-without-content": (
        dict(content_image=b"", options=pb.StylizeOptions(init=pb.INIT_CONTENT)),
        "options.init: INIT_CONTENT needs a content image",
    ),
    "bad-style": (dict(style_images=[pb.StyleImage(image=b"\x89PNG\r\n")]), "style_images[0].image"),
    "zero-size-side": (dict(content_image=png(400, 20)), "both sides must be at least 32 px"),
    "too-many-evaluations": (dict(options=pb.StylizeOptions(max_evaluations=200000)), "options.max_evaluations"),
    "tiny-side": (dict(options=pb.StylizeOptions(max_side_px=8)), "options.max_side_px: 8 is out of range"),
    "negative-weight": (dict(options=pb.StylizeOptions(style_weight=-1)), "options.style_weight: -1.0"),
    "nan-weight": (dict(options=pb.StylizeOptions(content_weight=float("nan"))), "options.content_weight: nan"),
    "inf-weight": (dict(options=pb.StylizeOptions(tv_weight=float("inf"))), "options.tv_weight: inf"),
    "unknown-optimizer": (dict(options=pb.StylizeOptions(optimizer=99)), "options.optimizer: unknown value 99"),
    "unknown-format": (dict(options=pb.StylizeOptions(output_format=7)), "options.output_format: unknown value 7"),
    "zero-learning-rate": (dict(options=pb.StylizeOptions(learning_rate=0)), "options.learning_rate"),
    "unknown-model": (dict(model="picasso"), "model: 'picasso' is not loaded"),
    "negative-blend": (
        dict(style_images=[pb.StyleImage(image=png(64, 64), blend_weight=-1)]),
        "style_images[0].blend_weight: -1.0",
    ),
    "zero-blends": (dict(style_images=[pb.StyleImage(image=png(64, 64), blend_weight=0)]), "at least one must be"),
    "style-scale": (dict(style_images=[pb.StyleImage(image=png(64, 64), scale=5)]), "style_images[0].scale: 5.0"),
    "unknown-layer": (
        dict(options=pb.StylizeOptions(style_layers=["relu9_1"])),
        "options.style_layers: 'relu9_1' not exported; this model exports relu1_1, relu2_1",
    ),
    "layer-weights-count": (
        dict(options=pb.StylizeOptions(style_layers=["relu1_1"], style_layer_weights=[1, 2])),
        "options.style_layer_weights: 2 given for 1 style layers",
    ),
    "init-image-unasked": (dict(options=pb.StylizeOptions(init_image=png(64, 64))), "options.init_image"),
    "too-many-scales": (
        dict(options=pb.StylizeOptions(max_side_px=64, scales=4)),
        "options.scales: the coarsest of 4 scales is 23x17",
    ),
    "min-improvement-range": (
        dict(options=pb.StylizeOptions(min_improvement=1.0)),
        "options.min_improvement: 1.0 is not allowed; expected 0 <= value < 1",
    ),
    "min-improvement-nan": (dict(options=pb.StylizeOptions(min_improvement=float("nan"))), "options.min_improvement"),
    "texture-size-with-content": (dict(options=pb.StylizeOptions(width_px=64)), "options.width_px/height_px"),
    "colour-without-content": (
        dict(content_image=b"", options=pb.StylizeOptions(colour_preservation=pb.COLOUR_PRESERVATION_LUMINANCE)),
        "options.colour_preservation",
    ),
    "unknown-colour": (
        dict(options=pb.StylizeOptions(colour_preservation=9)),
        "options.colour_preservation: unknown value 9; allowed: COLOUR_PRESERVATION_UNSPECIFIED",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_input_is_invalid_argument(stub: pb_grpc.StyleTransferServiceStub, case: str) -> None:
    """Each bad request gets INVALID_ARGUMENT naming the field and the problem, and a good one works after it."""
    fields, message = BAD_REQUESTS[case]
    request = _request(max_evaluations=2)
    for name, value in fields.items():
        if name == "style_images":
            del request.style_images[:]
            request.style_images.extend(value)
        elif name == "options":
            request.options.CopyFrom(value)
        else:
            setattr(request, name, value)
    with pytest.raises(grpc.RpcError) as error:
        list(stub.Stylize(request, timeout=60))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()
    assert "Traceback" not in error.value.details()
    assert_serves(stub)


def test_message_over_the_limit_is_refused(model_dir: Path) -> None:
    """A request larger than the configured message limit is refused with RESOURCE_EXHAUSTED."""
    with running_server([model_dir], "--max-message-bytes", "1000", "--drain", "0") as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.StyleTransferServiceStub(channel)
            request = _request()
            request.content_image = np.random.default_rng(0).bytes(3 << 20)
            with pytest.raises(grpc.RpcError) as error:
                list(stub.Stylize(request, timeout=60))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.slow
def test_sigterm_drains_then_cancels_with_a_clear_status(model_dir: Path) -> None:
    """SIGTERM: health NOT_SERVING, new jobs refused, a running job cancelled after the grace period, exit 0."""
    server = start_server([model_dir], "--drain", "1.5", "--grace", "1")
    outcome: dict[str, grpc.RpcError] = {}
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.StyleTransferServiceStub(channel)
        call = stub.Stylize(_request(128, 128, max_side_px=128, max_evaluations=5000, optimizer=pb.OPTIMIZER_ADAM))
        assert _first_event(call) == "started"

        def drain() -> None:
            try:
                list(call)
            except grpc.RpcError as error:
                outcome["error"] = error

        reader = threading.Thread(target=drain)
        reader.start()
        server.process.send_signal(15)
        server.wait_logged("shutting down")
        assert server.health() == NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Stylize(_request(max_evaluations=2), timeout=10))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        reader.join(timeout=60)
    assert outcome["error"].code() == grpc.StatusCode.UNAVAILABLE
    assert "grace period" in outcome["error"].details()
    assert server.process.wait(timeout=60) == 0


@pytest.mark.slow
def test_sigterm_lets_a_short_job_finish(model_dir: Path) -> None:
    """A job still running when the drain begins (the server says so) completes normally after SIGTERM."""
    server = start_server([model_dir], "--drain", "0", "--grace", "60")
    with grpc.insecure_channel(server.address) as channel:
        call = pb_grpc.StyleTransferServiceStub(channel).Stylize(_request(max_evaluations=100))
        assert _first_event(call) == "started"
        server.process.send_signal(15)
        draining = server.wait_logged("shutting down")
        # Counted when the drain began: were the job over already, this test would prove nothing.
        assert "shutting down with 1 running and 0 queued jobs" in draining, draining
        assert [kind for kind, _ in _events(call)][-1] == "result"
    assert server.process.wait(timeout=60) == 0


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xff\xff\xff",  # a tag with field number 0 after varint decoding: no message starts so
        b"\x0a\x10abc",  # content_image (field 1, length-delimited) claims 16 bytes and has 3: truncated
        b"\x0d\x00\x00",  # content_image as a 32-bit fixed value: the wrong wire type
        b"\x22\x02\xff\xfe",  # model (field 4, a string) holding invalid UTF-8
    ],
)
def test_malformed_request_bytes_are_invalid_argument_and_counted(
    server: InProcessServer, stub: pb_grpc.StyleTransferServiceStub, data: bytes
) -> None:
    """Bytes that are no StylizeRequest get INVALID_ARGUMENT naming the problem (gRPC's own deserializer gave
    UNKNOWN with a Python class name and logged a traceback), and the call is counted; the server keeps serving."""
    before = server.outcomes()
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_stream("/nst.v1.StyleTransferService/Stylize")(data, timeout=30)
        with pytest.raises(grpc.RpcError) as error:
            list(call)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value
    assert (error.value.details() or "").startswith("request: not a valid StylizeRequest")
    assert server.wait_outcomes(1, since=before) == {"InvalidRequest": 1}
    assert "Traceback" not in server.log()
    assert_serves(stub)


def test_malformed_describe_model_bytes_are_invalid_argument(server: InProcessServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        describe = channel.unary_unary("/nst.v1.StyleTransferService/DescribeModel")
        with pytest.raises(grpc.RpcError) as error:
            describe(b"\xff\xff\xff\xff", timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value
    assert (error.value.details() or "").startswith("request: not a valid DescribeModelRequest")
