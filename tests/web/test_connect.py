"""The HTTP port (`--http-port`): Connect (JSON and binary) and gRPC-Web beside gRPC, over one core.

In this process: the same answers and the same stream as gRPC (byte-identical images for the same seed), the
status table mapped to Connect's codes, the token, the message limit, a disconnect counted as a cancellation.
A real process for SIGTERM: both ports drain together.
"""

from __future__ import annotations

import http.client
import io
import json
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_json_codec
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from google.protobuf import json_format
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst.v1.style_transfer_connect import StyleTransferServiceClientSync
from nst_server.__main__ import main as server_main
from nst_server.testing import InProcessServer, poll_until, running_server, start_server
from nst_server.transport.connect import CONNECT_CODE, PAGE_FILES
from nst_server.transport.servicer import STATUS
from PIL import Image

from tests.client.support import self_signed
from tests.requests import events, stylize_request
from tests.web.connect_support import (
    END_STREAM,
    SERVICE,
    describe_json,
    envelope,
    frames,
    from_json,
    get,
    post,
    stylize_json,
)

TOKEN = "http-token-5e1d"
# Long enough to be running when the test acts on it; it is always cancelled, never waited for.
LONG_JOB = {"max_side_px": 128, "max_evaluations": 5000, "optimizer": pb.OPTIMIZER_ADAM}
# Deterministic for a seed, with previews, several iterations and L-BFGS's line search.
SMALL_JOB = {"max_side_px": 64, "max_evaluations": 8, "preview_every": 2, "seed": 5}


@pytest.fixture(name="server", scope="module")
def _server(model_dir: Path) -> Iterator[InProcessServer]:
    limits = ("--max-concurrent", "1", "--max-queue", "0", "--max-evaluations", "100000")
    with running_server([model_dir], *limits, "--http-port", "0", "--drain", "0") as server:
        yield server


@pytest.fixture(autouse=True)
def _idle(request: pytest.FixtureRequest) -> None:
    """Each test on the shared one-slot server starts once the last test's job has freed the slot."""
    if "server" in request.fixturenames:
        _wait_idle(request.getfixturevalue("server"))


@pytest.fixture(name="stub")
def _stub(server: InProcessServer) -> Iterator[pb_grpc.StyleTransferServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.StyleTransferServiceStub(channel)


def _connect_events(client: StyleTransferServiceClientSync, request: pb.StylizeRequest) -> list[tuple[str, object]]:
    return events(iter(client.stylize(request)))


def _wait_idle(server: InProcessServer) -> None:
    assert server.server is not None
    admission = server.server.admission
    poll_until(lambda: admission.running == 0, 30, "the last job's slot to free")


def _without_timings(kind: str, event: object) -> tuple[str, object]:
    """An event with what differs between two runs of one job (its id, wall-clock times) cleared."""
    assert hasattr(event, "CopyFrom")
    copy = type(event)()
    copy.CopyFrom(event)
    for field in ("job_id", "elapsed_s", "timings"):
        if copy.DESCRIPTOR.fields_by_name.get(field) is not None:
            copy.ClearField(field)
    return kind, copy


def test_json_describe_model_equals_grpc(server: InProcessServer, stub: pb_grpc.StyleTransferServiceStub) -> None:
    """POST {} as application/json (curl's call in the README) answers what gRPC's DescribeModel does."""
    response = post(server.http_url, f"{SERVICE}/DescribeModel", b"{}", {"Content-Type": "application/json"})
    assert (response.status, response.getheader("content-type")) == (200, "application/json")
    answer = json_format.Parse(response.read(), pb.DescribeModelResponse())
    assert answer == stub.DescribeModel(pb.DescribeModelRequest())
    assert answer.models[0].name


@pytest.mark.parametrize("protocol", ["connect-binary", "connect-json", "grpc-web"])
def test_stylize_stream_equals_grpc(
    server: InProcessServer, stub: pb_grpc.StyleTransferServiceStub, protocol: str
) -> None:
    """The same job over the HTTP port gives gRPC's events in order, and byte-identical previews and result."""
    request = stylize_request(**SMALL_JOB)
    over_grpc = events(stub.Stylize(request, timeout=120))
    _wait_idle(server)  # the only slot frees when the job's worker has ended, a moment after its Result
    if protocol == "connect-json":  # as curl sends it: the streaming envelope around JSON
        *messages, end = stylize_json(server.http_url, request)
        assert end == {}, end
        over_http = events(iter(from_json(message) for message in messages))
    else:
        kind = ProtocolType.GRPC_WEB if protocol == "grpc-web" else ProtocolType.CONNECT
        with StyleTransferServiceClientSync(server.http_url, protocol=kind, timeout_ms=120_000) as client:
            over_http = _connect_events(client, request)
    assert [kind for kind, _ in over_http] == [kind for kind, _ in over_grpc]
    assert "preview" in [kind for kind, _ in over_http]
    assert [_without_timings(*e) for e in over_http] == [_without_timings(*e) for e in over_grpc]
    result = over_http[-1][1]
    assert isinstance(result, pb.Result)
    assert Image.open(io.BytesIO(result.image)).size == (64, 48)
    assert result.image == over_grpc[-1][1].image  # type: ignore[attr-defined]


def test_status_table_maps_to_connect_codes() -> None:
    """Every gRPC status but OK has a Connect code of the same name (CANCELLED spelt "canceled"), so each
    entry of the one status table reaches an HTTP caller as the code a gRPC caller gets."""
    assert set(CONNECT_CODE) == set(grpc.StatusCode) - {grpc.StatusCode.OK}
    for status, code in CONNECT_CODE.items():
        assert code.value == ("canceled" if status == grpc.StatusCode.CANCELLED else status.name.lower())
    assert set(STATUS.values()) <= set(CONNECT_CODE)


@pytest.mark.parametrize("protocol", [ProtocolType.CONNECT, ProtocolType.GRPC_WEB], ids=["connect", "grpc-web"])
def test_invalid_argument(
    server: InProcessServer, stub: pb_grpc.StyleTransferServiceStub, protocol: ProtocolType
) -> None:
    """A bad request gets invalid_argument with the message gRPC gives, word for word."""
    request = stylize_request(max_evaluations=2)
    request.content_image = b"not an image"
    with pytest.raises(grpc.RpcError) as over_grpc:
        list(stub.Stylize(request, timeout=60))
    with (
        StyleTransferServiceClientSync(server.http_url, protocol=protocol) as client,
        pytest.raises(ConnectError) as over_http,
    ):
        list(client.stylize(request))
    assert over_grpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert over_http.value.code == Code.INVALID_ARGUMENT
    assert over_http.value.message == over_grpc.value.details()
    assert over_http.value.message.startswith("content_image")


def _wait_running(server: InProcessServer, count: int) -> None:
    assert server.server is not None
    admission = server.server.admission
    poll_until(lambda: admission.running == count, 60, f"{count} running jobs")


def test_full_queue_is_resource_exhausted_and_a_disconnect_cancels(
    server: InProcessServer, stub: pb_grpc.StyleTransferServiceStub
) -> None:
    """A job over HTTP takes the only slot, so the next call (either port) is refused resource_exhausted naming
    the limit; the HTTP caller then hangs up mid-stream: its job is stopped, counted cancelled (protocol connect),
    and the slot is free for the next job."""
    before = server.scrape()
    request = stylize_request(128, 128, **LONG_JOB)
    response = post(
        server.http_url, f"{SERVICE}/Stylize", envelope(request.SerializeToString()),
        {"Content-Type": "application/connect+proto"},
    )  # fmt: skip
    assert response.status == 200
    stream = frames(response)
    kinds = []
    while "progress" not in kinds:  # the job is computing: its slot is taken
        flags, payload = next(stream)
        assert not flags & END_STREAM, payload
        kinds.append(pb.StylizeResponse.FromString(payload).WhichOneof("event"))
    with StyleTransferServiceClientSync(server.http_url) as client, pytest.raises(ConnectError) as refused:
        list(client.stylize(stylize_request(max_evaluations=2)))
    assert refused.value.code == Code.RESOURCE_EXHAUSTED
    assert "--max-queue 0" in refused.value.message
    with pytest.raises(grpc.RpcError) as refused_grpc:  # one queue for both ports
        list(stub.Stylize(stylize_request(max_evaluations=2), timeout=60))
    assert refused_grpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    response.close()  # hang up mid-stream
    assert response.fp is None

    def cancelled_over_connect() -> bool:
        labels = {"outcome": "cancelled", "code": "CANCELLED", "protocol": "connect"}
        key = ("nst_jobs_finished_total", frozenset(labels.items()))
        return server.scrape().get(key, 0.0) == before.get(key, 0.0) + 1

    poll_until(cancelled_over_connect, 60, "the disconnected job counted cancelled over connect")
    _wait_running(server, 0)
    with StyleTransferServiceClientSync(server.http_url, timeout_ms=120_000) as client:
        assert _connect_events(client, stylize_request(max_evaluations=2))[-1][0] == "result"


def test_five_mib_image_is_accepted_in_json(server: InProcessServer) -> None:
    """A 5 MiB photo (7 MiB as JSON's base64) is read and painted: the body limit follows --max-message-bytes,
    not the Connect library's 4 MiB default."""
    noise = np.random.default_rng(0).integers(0, 256, (1100, 1600, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG", compress_level=0)
    photo = buffer.getvalue()
    assert len(photo) > 5 << 20
    request = stylize_request(max_side_px=64, max_evaluations=2, optimizer=pb.OPTIMIZER_ADAM)
    request.content_image = photo
    codec = google_protobuf_json_codec()
    with StyleTransferServiceClientSync(server.http_url, codec=codec, send_compression=None) as client:
        kinds = [kind for kind, _ in _connect_events(client, request)]
    assert kinds[0] == "started"
    assert kinds[-1] == "result"


def test_page_and_nothing_else(server: InProcessServer) -> None:
    """The page's files at their paths; any other path is 404, plain gRPC on this port is refused (415)."""
    for path in PAGE_FILES:
        response = get(server.http_url, path)
        assert (response.status, response.getheader("content-type")) == (200, PAGE_FILES[path][1]), path
        assert "default-src 'none'" in (response.getheader("content-security-policy") or ""), path
        assert response.read()
    html = get(server.http_url, "/").read().decode()
    assert 'src="nst.js"' in html
    assert 'href="nst.css"' in html
    for path in ("/metrics", "/index.html", "/nst.v1.StyleTransferService/Nope", "/grpc.health.v1.Health/Check"):
        assert post(server.http_url, path, b"{}", {"Content-Type": "application/json"}).status == 404, path
    grpc_call = post(server.http_url, f"{SERVICE}/DescribeModel", b"", {"Content-Type": "application/grpc"})
    assert grpc_call.status == 415
    assert b"gRPC port" in grpc_call.read()


def test_token_limits_and_cors(model_dir: Path, tmp_path: Path) -> None:
    """With a token: unauthenticated without it (either protocol), served with it; a request over
    --max-message-bytes is resource_exhausted as over gRPC; CORS only for an allowed origin."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    flags = ("--token-file", str(token_file), "--max-message-bytes", "200000", "--http-port", "0", "--drain", "0")
    with running_server([model_dir], *flags, "--http-allow-origin", "https://app.example") as server:
        status, body = describe_json(server.http_url)
        assert (status, body["code"]) == (401, "unauthenticated")
        assert body["message"].startswith("missing bearer token")
        status, body = describe_json(server.http_url, {"Authorization": "Bearer nope"})
        assert (status, body["code"], body["message"]) == (401, "unauthenticated", "wrong bearer token")
        with StyleTransferServiceClientSync(server.http_url, protocol=ProtocolType.GRPC_WEB) as client:
            with pytest.raises(ConnectError) as refused:
                client.describe_model(pb.DescribeModelRequest())
            assert refused.value.code == Code.UNAUTHENTICATED
            answer = client.describe_model(pb.DescribeModelRequest(), headers={"authorization": f"Bearer {TOKEN}"})
        assert answer.limits.max_message_bytes == 200000

        big = stylize_request(max_evaluations=2)
        big.content_image = np.random.default_rng(0).bytes(1_500_000)  # over 200000 + 1 MiB for the other fields
        with StyleTransferServiceClientSync(server.http_url) as client, pytest.raises(ConnectError) as too_big:
            list(client.stylize(big, headers={"authorization": f"Bearer {TOKEN}"}))
        assert too_big.value.code == Code.RESOURCE_EXHAUSTED
        assert "--max-message-bytes" in too_big.value.message
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.StyleTransferServiceStub(channel)
            with pytest.raises(grpc.RpcError) as too_big_grpc:
                list(stub.Stylize(big, metadata=[("authorization", f"Bearer {TOKEN}")], timeout=60))
        assert too_big_grpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        allowed = {"Origin": "https://app.example", "Authorization": f"Bearer {TOKEN}"}
        for origin, expected in (("https://app.example", "https://app.example"), ("https://evil.example", None)):
            response = post(server.http_url, f"{SERVICE}/DescribeModel", b"{}",
                            {**allowed, "Origin": origin, "Content-Type": "application/json"})  # fmt: skip
            assert response.status == 200
            assert response.getheader("access-control-allow-origin") == expected
        assert get(server.http_url, f"{SERVICE}/Stylize", "OPTIONS", {"Origin": "https://evil.example"}).status == 403
        preflight = get(server.http_url, f"{SERVICE}/Stylize", "OPTIONS", {"Origin": "https://app.example"})
        assert preflight.status == 204
        assert "authorization" in (preflight.getheader("access-control-allow-headers") or "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--http-port", "70000"], "--http-port 70000: a TCP port is 0 (a free one) to 65535"),
        (["--http-allow-origin", "https://app.example"], "--http-allow-origin is for the HTTP port"),
    ],
)
def test_http_flags_that_cannot_work_are_usage_errors(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line and exit 2, before any model is loaded."""
    assert server_main(["--model", str(tmp_path / "no-model"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nst-server: error: {message}"), err
    assert len(err.splitlines()) == 1, err


def test_tls_serves_https_with_the_grpc_ports_pair(model_dir: Path, tmp_path: Path) -> None:
    """With --tls-cert/--tls-key the HTTP port is HTTPS, with the same certificate: plain HTTP gets no answer."""
    cert, key = self_signed(tmp_path)
    flags = ("--tls-cert", str(cert), "--tls-key", str(key), "--http-port", "0", "--drain", "0")
    with running_server([model_dir], *flags) as server:
        assert server.http_url.startswith("https://")
        trusting = ssl.create_default_context(cafile=str(cert))
        call = urllib.request.Request(
            f"{server.http_url}{SERVICE}/DescribeModel", data=b"{}", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(call, context=trusting, timeout=60) as response:
            assert json.loads(response.read())["models"]
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            describe_json(server.http_url.replace("https://", "http://"))


@pytest.mark.slow  # a real process: signals and its exit status
def test_sigterm_drains_both_ports(model_dir: Path) -> None:
    """SIGTERM with a job running over HTTP: new jobs are refused unavailable on both ports while it finishes its
    result, then both ports close and the process exits 0."""
    server = start_server([model_dir], "--http-port", "0", "--drain", "1", "--grace", "120")
    request = stylize_request(max_side_px=64, max_evaluations=150, optimizer=pb.OPTIMIZER_ADAM)
    with StyleTransferServiceClientSync(server.http_url, timeout_ms=300_000) as client:
        stream = iter(client.stylize(request))
        assert next(stream).WhichOneof("event") == "started"
        finished: list[str] = []
        reader = threading.Thread(target=lambda: finished.extend(kind for kind, _ in events(stream)))
        reader.start()
        server.process.send_signal(15)
        draining = server.wait_logged("shutting down")
        assert "shutting down with 1 running" in draining, draining
        with pytest.raises(ConnectError) as refused:
            list(client.stylize(stylize_request(max_evaluations=2)))
        assert refused.value.code == Code.UNAVAILABLE
        with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as refused_grpc:
            list(pb_grpc.StyleTransferServiceStub(channel).Stylize(stylize_request(max_evaluations=2), timeout=30))
        assert refused_grpc.value.code() == grpc.StatusCode.UNAVAILABLE
        reader.join(timeout=300)
    assert finished[-1:] == ["result"], finished
    assert server.process.wait(timeout=60) == 0
    assert "stopped" in server.log()
