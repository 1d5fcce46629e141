"""--max-connection-age: old connections are replaced (so clients re-resolve DNS) without cutting running streams."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst_server.testing import start_server

from tests.images import png

pytestmark = pytest.mark.slow

AGE_S = 0.5


def _request(max_evaluations: int) -> pb.StylizeRequest:
    return pb.StylizeRequest(
        content_image=png(64, 48, seed=1),
        style_images=[pb.StyleImage(image=png(64, 64, seed=2))],
        options=pb.StylizeOptions(max_side_px=64, optimizer=pb.OPTIMIZER_ADAM, max_evaluations=max_evaluations),
    )


def test_stream_outlives_the_connection_age(model_dir: Path) -> None:
    """A stream runs on well past the connection's age, and the same channel serves the next call afterwards."""
    server = start_server(
        [model_dir], "--max-connection-age", str(AGE_S), "--max-evaluations", "100000", "--drain", "0"
    )
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.StyleTransferServiceStub(channel)
            call = stub.Stylize(_request(100000), timeout=120)
            # gRPC adds up to 10% jitter to the age; four ages in, the GOAWAY has long been sent.
            late = (r for r in call if r.WhichOneof("event") == "progress" and r.progress.elapsed_s > 4 * AGE_S)
            assert next(late, None) is not None, "the stream ended before it outlived the connection age"
            call.cancel()
            events = [response.WhichOneof("event") for response in stub.Stylize(_request(2), timeout=60)]
            assert events[-1] == "result"
    finally:
        rc = server.terminate()
    assert rc == 0, server.log()
