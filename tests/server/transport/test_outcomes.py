"""How a job's ending is counted: a job whose Result was sent is ok, whatever the caller does after it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst_server.config import ServerConfig
from nst_server.testing import load_model, outcomes_of, parse_samples, running_server
from nst_server.transport.admission import Admission
from nst_server.transport.metrics import Metrics
from nst_server.transport.servicer import StyleTransferServicer
from prometheus_client import generate_latest

from tests.requests import stylize_request

CLOSES = 50
REQUEST = stylize_request(32, 32, max_evaluations=1, optimizer=pb.OPTIMIZER_ADAM)


@pytest.mark.slow
def test_closing_the_stream_right_after_the_result_still_counts_ok(model_dir: Path) -> None:
    """50 calls over gRPC, each cancelled the moment its Result arrives: 50 jobs counted ok, none cancelled."""
    with running_server([model_dir], "--drain", "0") as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.StyleTransferServiceStub(channel)
        for _ in range(CLOSES):
            call = stub.Stylize(REQUEST, timeout=60)
            kinds = []
            for response in call:
                kinds.append(response.WhichOneof("event"))
                if kinds[-1] == "result":
                    call.cancel()  # the caller leaves at once; the server may not have resumed past its yield
                    break
            assert kinds[-1] == "result", kinds
        assert server.wait_outcomes(CLOSES) == {"ok": CLOSES}


class _Context:
    """The little of grpc.aio.ServicerContext that Stylize touches on a good job: who the caller is."""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"


def test_a_handler_closed_at_the_result_yield_counts_ok(model_dir: Path) -> None:
    """What gRPC does when the caller leaves before the handler resumes: close it at the Result's yield."""
    config = ServerConfig(model_dirs=(model_dir,))
    models = [load_model(model_dir)]

    async def run() -> Metrics:
        admission = Admission(1, 0)
        metrics = Metrics(admission, models)
        servicer = StyleTransferServicer(models, config, admission, metrics)
        stream = servicer.Stylize(REQUEST, _Context())  # type: ignore[arg-type]  # a good job asks only its peer
        async for response in stream:
            if response.WhichOneof("event") == "result":
                break
        await stream.aclose()  # GeneratorExit at the yield that sent the Result
        return metrics

    metrics = asyncio.run(run())
    assert outcomes_of(parse_samples(generate_latest(metrics.registry).decode())) == {"ok": 1}


def test_evaluations_are_counted_as_computed_not_as_delivered(model_dir: Path) -> None:
    """A caller that reads nothing after its first event: the job's evaluations are all counted while it computes
    (nst_evaluations counted delivered Progress events, so a lagging or vanished reader hid the work done)."""
    config = ServerConfig(model_dirs=(model_dir,))
    models = [load_model(model_dir)]
    evaluations = 5
    request = stylize_request(32, 32, max_evaluations=evaluations, optimizer=pb.OPTIMIZER_ADAM)

    def counted(metrics: Metrics) -> float:
        return parse_samples(generate_latest(metrics.registry).decode())[("nst_evaluations_total", frozenset())]

    async def run() -> float:
        admission = Admission(1, 0)
        metrics = Metrics(admission, models)
        servicer = StyleTransferServicer(models, config, admission, metrics)
        stream = servicer.Stylize(request, _Context())  # type: ignore[arg-type]
        assert (await anext(stream)).WhichOneof("event") == "started"
        for _ in range(6000):  # up to 60 s for the job to compute its evaluations, none of them read
            if counted(metrics) >= evaluations:
                break
            await asyncio.sleep(0.01)
        await stream.aclose()
        return counted(metrics)

    assert asyncio.run(run()) == evaluations
