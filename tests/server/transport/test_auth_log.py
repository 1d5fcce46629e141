"""Refused-token log lines are rate-limited: a caller repeating a refused call cannot fill the server's log."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst_server.testing import running_server
from nst_server.transport.auth import Throttle

CALLS = 50


def test_throttle_allows_one_line_per_interval_and_counts_the_rest() -> None:
    now = [0.0]
    throttle = Throttle(10.0, clock=lambda: now[0])
    assert throttle.allow() == 0  # the first is logged
    assert [throttle.allow() for _ in range(5)] == [None] * 5
    now[0] = 9.9
    assert throttle.allow() is None
    now[0] = 10.0
    assert throttle.allow() == 6  # logged, saying how many were held back
    assert throttle.allow() is None


def test_repeated_refusals_log_far_fewer_lines_than_calls(model_dir: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("the-right-token\n")
    with running_server([model_dir], "--token-file", str(token_file)) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.StyleTransferServiceStub(channel)
            for _ in range(CALLS):
                with pytest.raises(grpc.RpcError) as error:
                    stub.DescribeModel(
                        pb.DescribeModelRequest(), metadata=[("authorization", "Bearer wrong")], timeout=30
                    )
                assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        refused = [line for line in server.log_lines() if "refused /nst.v1.StyleTransferService" in line]
    assert 1 <= len(refused) < CALLS / 5, refused  # one line per 10 s at most: a flood of calls is not a flood of lines
