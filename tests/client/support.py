"""Helpers of the client tests: input files, server log lines, free ports, the CLI, certificates, a recording server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc

from tests.images import encoded, picture


@dataclass(frozen=True)
class Inputs:
    content: Path  # 80x60 PNG
    style: Path  # 64x64 PNG


def free_port() -> int:
    """A loopback port nobody listens on (bound once by the OS, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without the CLI's own variables (the tests say everything explicitly), plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if name not in ("NST_SERVER", "NST_TOKEN", "NST_DEBUG")}
    return env | dict(extra or {})


def nst(
    *args: str | Path, timeout_s: float = 120.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion, capturing stdout and stderr; ``env`` adds variables (e.g. NST_TOKEN)."""
    command = [sys.executable, "-m", "nst_client.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=cli_env(env))


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost and its key (folder/cert.pem, folder/key.pem), made by openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
               "-keyout", str(key), "-out", str(cert), "-days", "1",
               "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("the openssl command is not installed")
    return cert, key


@dataclass
class Recorder(pb_grpc.StyleTransferServiceServicer):
    """A stand-in StyleTransferService that records each call's metadata; it can fail with UNAVAILABLE on cue."""

    fail_first: int = 0  # this many Stylize attempts fail with UNAVAILABLE before sending anything
    fail_after_start: bool = False  # fail with UNAVAILABLE after the `started` event
    calls: list[dict[str, str]] = field(default_factory=list)
    requests: list[pb.StylizeRequest] = field(default_factory=list)  # every Stylize request, as received

    def DescribeModel(  # noqa: N802 (gRPC's method name)
        self, request: pb.DescribeModelRequest, context: grpc.ServicerContext
    ) -> pb.DescribeModelResponse:
        self.calls.append(dict(context.invocation_metadata()))  # type: ignore[arg-type]
        return pb.DescribeModelResponse(limits=pb.Limits(max_concurrent=1))

    def Stylize(self, request: pb.StylizeRequest, context: grpc.ServicerContext) -> Iterator[pb.StylizeResponse]:  # noqa: N802
        self.calls.append(dict(context.invocation_metadata()))  # type: ignore[arg-type]
        self.requests.append(request)
        if len(self.calls) <= self.fail_first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        yield pb.StylizeResponse(started=pb.JobStarted(job_id="j", model="m", width=32, height=32, max_evaluations=1))
        if self.fail_after_start:
            context.abort(grpc.StatusCode.UNAVAILABLE, "lost the worker")
        image = encoded(picture(32, 32, 0))
        yield pb.StylizeResponse(result=pb.Result(image=image, format=pb.IMAGE_FORMAT_PNG, width=32, height=32))


@dataclass
class RecordingServer:
    recorder: Recorder
    address: str


def serve_recorder(recorder: Recorder, credentials: grpc.ServerCredentials | None = None) -> Iterator[RecordingServer]:
    """Serve ``recorder`` on a free loopback port (TLS with ``credentials``) until the generator is closed."""
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_StyleTransferServiceServicer_to_server(recorder, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield RecordingServer(recorder, f"127.0.0.1:{port}")
    finally:
        server.stop(grace=None)
