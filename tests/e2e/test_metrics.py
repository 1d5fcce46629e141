"""Prometheus metrics of a real `nst-server`, scraped over HTTP while jobs run and after they end."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst_server.testing import Samples, ServerProcess, poll_until, start_server
from nst_server.transport.metrics import METRICS_CONNECTIONS

from tests.images import png


@pytest.fixture(name="server", scope="module")
def _server(model_dir: Path) -> Iterator[ServerProcess]:
    server = start_server(
        [model_dir],
        "--max-concurrent",
        "1",
        "--max-queue",
        "1",
        "--max-evaluations",
        "100000",
        "--metrics-port",
        "0",
        "--drain",
        "0",
    )
    yield server
    assert server.terminate() == 0


@pytest.fixture(name="scrape")
def _scrape(server: ServerProcess) -> Callable[[], Samples]:
    return server.scrape


@pytest.fixture(name="stub")
def _stub(server: ServerProcess) -> Iterator[pb_grpc.StyleTransferServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.StyleTransferServiceStub(channel)


def _request(content: bytes | None = None, **options: object) -> pb.StylizeRequest:
    return pb.StylizeRequest(
        content_image=png(64, 48, seed=1) if content is None else content,
        style_images=[pb.StyleImage(image=png(64, 64, seed=2))],
        options=pb.StylizeOptions(max_side_px=64, optimizer=pb.OPTIMIZER_ADAM, **options),
    )


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _eventually(scrape: Callable[[], Samples], done: Callable[[Samples], bool], timeout_s: float = 30.0) -> Samples:
    """Scrape until ``done`` holds (the server records a call's end just after the caller hears of it)."""
    return poll_until(lambda: done(samples := scrape()) and samples, timeout_s, "the metrics to settle")


def test_scrape_during_a_job(stub: pb_grpc.StyleTransferServiceStub, scrape: Callable[[], Samples]) -> None:
    """While a job computes: one running, one queued behind it, its iterations timed, its evaluations counted."""
    before = scrape()
    running = stub.Stylize(_request(max_evaluations=100000), timeout=300)
    try:
        next(response for response in running if response.WhichOneof("event") == "progress")
        waiting = stub.Stylize(_request(max_evaluations=1), timeout=300)  # only now: it must find the slot taken
        try:
            assert next(waiting).WhichOneof("event") == "queued"
            during = scrape()
        finally:
            waiting.cancel()
    finally:
        running.cancel()
    assert (_value(during, "nst_jobs_running"), _value(during, "nst_jobs_queued")) == (1, 1)
    assert _value(during, "nst_iteration_seconds_count") > _value(before, "nst_iteration_seconds_count")
    assert _value(during, "nst_evaluations_total") > _value(before, "nst_evaluations_total")

    cancelled = {"outcome": "cancelled", "code": "CANCELLED", "protocol": "grpc"}
    # The slot (and its memory) comes back when the job's worker has stopped, within an evaluation of the cancel.
    after = _eventually(
        scrape,
        lambda s: (
            _value(s, "nst_jobs_finished_total", **cancelled) - _value(before, "nst_jobs_finished_total", **cancelled)
            >= 2
            and (_value(s, "nst_jobs_running"), _value(s, "nst_jobs_queued")) == (0, 0)
        ),
    )
    assert (
        _value(after, "nst_jobs_finished_total", **cancelled) - _value(before, "nst_jobs_finished_total", **cancelled)
        == 2
    )


def test_finished_job_counts_as_ok(
    stub: pb_grpc.StyleTransferServiceStub, scrape: Callable[[], Samples], model_dir: Path
) -> None:
    """A job that reaches its result counts once as ok, with its seconds and its evaluations recorded."""
    ok = {"outcome": "ok", "code": "OK", "protocol": "grpc"}
    # Evaluations count as computed: an earlier test's cancelled job may still be finishing one.
    before = _eventually(scrape, lambda s: _value(s, "nst_jobs_held") == 0)
    events = [response.WhichOneof("event") for response in stub.Stylize(_request(max_evaluations=3), timeout=120)]
    assert events[-1] == "result"
    after = scrape()
    assert _value(after, "nst_jobs_finished_total", **ok) - _value(before, "nst_jobs_finished_total", **ok) == 1
    ok_seconds = ("nst_job_seconds_count", {"outcome": "ok"})
    assert _value(after, ok_seconds[0], **ok_seconds[1]) - _value(before, ok_seconds[0], **ok_seconds[1]) == 1
    assert _value(after, "nst_evaluations_total") - _value(before, "nst_evaluations_total") == 3
    assert _value(after, "nst_iteration_seconds_count") - _value(before, "nst_iteration_seconds_count") == 3
    assert _value(after, "nst_device_info", device="cpu", model=model_dir.name) == 1
    assert (_value(after, "nst_jobs_max_running"), _value(after, "nst_jobs_max_queued")) == (1, 1)


def test_rejected_request_counts_under_its_status_code(
    stub: pb_grpc.StyleTransferServiceStub, scrape: Callable[[], Samples]
) -> None:
    """A request refused as invalid counts with code INVALID_ARGUMENT."""
    invalid = {"outcome": "InvalidRequest", "code": "INVALID_ARGUMENT", "protocol": "grpc"}
    before = _value(scrape(), "nst_jobs_finished_total", **invalid)
    with pytest.raises(grpc.RpcError) as error:
        list(stub.Stylize(_request(content=b"not an image"), timeout=60))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = _eventually(scrape, lambda s: _value(s, "nst_jobs_finished_total", **invalid) > before)
    assert _value(after, "nst_jobs_finished_total", **invalid) - before == 1


def _threads(server: ServerProcess) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])


def test_metrics_bind_loopback_and_idle_connections_cost_no_more_than_the_cap(server: ServerProcess) -> None:
    """The metrics have no authentication: they listen on 127.0.0.1 unless told otherwise. 200 sockets that connect
    and send nothing add at most METRICS_CONNECTIONS threads (each one held a thread before), and once they are
    gone the metrics answer again."""
    address = server.wait_logged(r"metrics on").rsplit(" ", 1)[-1]
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1"
    server.scrape()
    before = _threads(server)
    sockets = [socket.create_connection((host, int(port)), timeout=10) for _ in range(200)]
    try:
        peak = max(_threads(server) for _ in range(20))
    finally:
        for sock in sockets:
            sock.close()
    assert peak <= before + METRICS_CONNECTIONS

    def answers() -> bool:  # a scrape that meets the last of the 200 (refused, or reset as they go) is retried
        try:
            return _value(server.scrape(), "nst_jobs_max_running") == 1
        except OSError:
            return False

    assert poll_until(answers, 60, "the metrics to answer")
