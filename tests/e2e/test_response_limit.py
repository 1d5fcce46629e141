"""The send limit is not the request limit: a result larger than --max-message-bytes is delivered, and a result
that could exceed --max-response-bytes is refused before the job computes anything.

Until the limits were separated, a result over --max-message-bytes (plus 1 MiB) was computed in full, then failed in
gRPC, and the job was counted ok.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst_server.testing import poll_until, running_server

from tests.images import png
from tests.requests import events, status_of

REQUEST_LIMIT = 64 * 1024  # the server's --max-message-bytes: its receive limit is this plus 1 MiB


def _noise_texture(side: int) -> pb.StylizeRequest:
    """Texture synthesis from seeded noise, one tiny Adam step: the result is noise, as large as a PNG gets."""
    return pb.StylizeRequest(
        style_images=[pb.StyleImage(image=png(64, 64, seed=2))],
        options=pb.StylizeOptions(width_px=side, height_px=side, max_side_px=side, max_evaluations=1,
                                  optimizer=pb.OPTIMIZER_ADAM, learning_rate=1e-4, init=pb.INIT_NOISE),
    )  # fmt: skip


@pytest.mark.slow  # one whole 640 px evaluation
def test_a_result_larger_than_the_request_limit_is_delivered(model_dir: Path) -> None:
    with running_server([model_dir], "--max-message-bytes", str(REQUEST_LIMIT), "--tile-size", "0") as server:
        with grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", -1)]) as channel:
            stub = pb_grpc.StyleTransferServiceStub(channel)
            stream = events(stub.Stylize(_noise_texture(640), timeout=300))
        assert server.wait_outcomes(1) == {"ok": 1}
    kind, result = stream[-1]
    assert kind == "result"
    assert len(result.image) > REQUEST_LIMIT + (1 << 20)  # over what the send limit used to be


def test_a_result_that_could_not_be_sent_is_refused_before_the_job_starts(model_dir: Path) -> None:
    with running_server([model_dir], "--max-response-bytes", "200000") as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.StyleTransferServiceStub(channel)
            code, message = status_of(stub.Stylize(_noise_texture(512), timeout=60))
            assert status_of(stub.Stylize(_noise_texture(128), timeout=120)) == (grpc.StatusCode.OK, "")
        assert server.wait_outcomes(2) == {"InvalidRequest": 1, "ok": 1}
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("options.max_side_px: a 512x512 result may take up to")
    assert "--max-response-bytes 200000" in message


@pytest.mark.slow  # previews until the connection's flow-control window is full: tens of seconds
def test_a_reader_that_stops_reading_is_ended_and_its_job_cancelled(model_dir: Path) -> None:
    """A caller takes its first event and then reads nothing while previews of noise fill the connection's window:
    within --stall-timeout of the first write that cannot complete, the call ends, the job stops, its slot comes
    back (counted "stalled"), and the next job runs."""
    request = _noise_texture(256)
    request.options.max_evaluations, request.options.preview_every = 5000, 1
    flags = ("--stall-timeout", "1", "--max-queue", "0", "--drain", "0")
    with running_server([model_dir], *flags) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.StyleTransferServiceStub(channel)
        stalled = stub.Stylize(request, timeout=300)
        assert next(stalled).WhichOneof("event") == "started"
        assert server.wait_outcomes(1, timeout_s=240) == {"stalled": 1}
        # Its slot comes back once its worker has stopped, within an evaluation.
        poll_until(lambda: server.scrape()[("nst_jobs_running", frozenset())] == 0, 60, "the slot to come back")
        assert status_of(stub.Stylize(_noise_texture(64), timeout=120)) == (grpc.StatusCode.OK, "")
        stalled.cancel()
    assert "took no message for 1s (--stall-timeout)" in server.log()


@pytest.mark.slow  # a job runs for its second
def test_a_job_that_runs_past_max_job_duration_is_stopped_with_deadline_exceeded(model_dir: Path) -> None:
    request = _noise_texture(128)
    request.options.max_evaluations = 5000
    with running_server([model_dir], "--max-job-duration", "1", "--drain", "0") as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.StyleTransferServiceStub(channel)
            code, message = status_of(stub.Stylize(request, timeout=300))
            poll_until(lambda: server.scrape()[("nst_jobs_running", frozenset())] == 0, 60, "the slot to come back")
            assert status_of(stub.Stylize(_noise_texture(64), timeout=120)) == (grpc.StatusCode.OK, "")
        assert server.wait_outcomes(2) == {"JobTimeout": 1, "ok": 1}
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert message.startswith("ran for 1s, this server's limit (--max-job-duration 1)")
