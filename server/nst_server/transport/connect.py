"""The HTTP port (`nst-server --http-port`): the Connect protocol (JSON and binary) and gRPC-Web, and the page at /.

A thin adapter. Every call goes to the gRPC servicer's own ``stylize`` and ``describe``, so both ports share one
admission queue, one set of limits, one token, one set of metrics (labelled by protocol) and one drain; this module
only translates: a JobError's status (servicer.STATUS, the one table) into a Connect code (CONNECT_CODE), the
``authorization`` header into auth.refusal, and the request size into --max-message-bytes. The Connect runtime
(connectrpc, beta, pinned exactly) is served by uvicorn on the gRPC server's own event loop.

Served here and nothing else: POST /nst.v1.StyleTransferService/{Stylize,DescribeModel} in Connect or gRPC-Web,
and the page's three files. Plain gRPC belongs to the gRPC port (uvicorn cannot send HTTP trailers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Generator, Iterable, Sequence
from importlib import resources
from typing import Any

import grpc
import uvicorn
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from nst.v1 import style_transfer_pb2 as pb
from nst.v1.style_transfer_connect import StyleTransferServiceASGIApplication

from ..config import ServerConfig
from ..domain.errors import JobError
from . import auth
from .servicer import StyleTransferServicer, caller_of, status_of

log = logging.getLogger(__name__)

# gRPC's status codes in Connect's spelling (connectrpc.com/docs/protocol#error-codes). Written out rather than
# derived from the names: Connect spells CANCELLED "canceled", and a code missing here should fail a test, not
# reach a caller as something else.
CONNECT_CODE: dict[grpc.StatusCode, Code] = {
    grpc.StatusCode.CANCELLED: Code.CANCELED,
    grpc.StatusCode.UNKNOWN: Code.UNKNOWN,
    grpc.StatusCode.INVALID_ARGUMENT: Code.INVALID_ARGUMENT,
    grpc.StatusCode.DEADLINE_EXCEEDED: Code.DEADLINE_EXCEEDED,
    grpc.StatusCode.NOT_FOUND: Code.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: Code.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED: Code.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Code.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION: Code.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED: Code.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE: Code.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED: Code.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL: Code.INTERNAL,
    grpc.StatusCode.UNAVAILABLE: Code.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS: Code.DATA_LOSS,
    grpc.StatusCode.UNAUTHENTICATED: Code.UNAUTHENTICATED,
}

SERVICE_PATH = "/nst.v1.StyleTransferService/"
# The page: path -> (file in nst_server/transport/page, content type). index.html names the other two.
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/nst.js": ("nst.js", "text/javascript; charset=utf-8"),
    "/nst.css": ("nst.css", "text/css; charset=utf-8"),
}
# The page loads nothing from elsewhere and talks only to this port; previews and results are blob: URLs.
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# What a browser on an allowed origin may send and read (connectrpc.com/docs/cors).
_CORS_ALLOW_HEADERS = (
    "authorization, content-type, connect-protocol-version, connect-timeout-ms, grpc-timeout, x-grpc-web, x-user-agent"
)
_CORS_EXPOSE_HEADERS = "grpc-status, grpc-message, grpc-status-details-bin"
# A JSON request carries its images in base64 (4 bytes for 3), plus field names: the body may be this many times
# the message; the message itself is held to gRPC's limit in ConnectService.stylize.
_JSON_BODY_FACTOR = 2


def protocol_of(content_type: str) -> str:
    """The metrics' protocol label of an HTTP call: grpc-web or connect."""
    return "grpc-web" if content_type.startswith("application/grpc-web") else "connect"


def connect_error(error: JobError) -> ConnectError:
    """``error`` as the Connect error its gRPC status maps to, with the same message."""
    return ConnectError(CONNECT_CODE[status_of(error)], str(error))


class ConnectService:
    """StyleTransferService for connectrpc (the generated Protocol): the servicer's calls, errors translated."""

    def __init__(self, servicer: StyleTransferServicer, max_message_bytes: int) -> None:
        self._servicer = servicer
        self._max_message_bytes = max_message_bytes

    async def describe_model(
        self, request: pb.DescribeModelRequest, ctx: RequestContext[pb.DescribeModelRequest, pb.DescribeModelResponse]
    ) -> pb.DescribeModelResponse:
        return self._servicer.describe()

    async def stylize(
        self, request: pb.StylizeRequest, ctx: RequestContext[pb.StylizeRequest, pb.StylizeResponse]
    ) -> AsyncIterator[pb.StylizeResponse]:
        size = request.ByteSize()
        if size > self._max_message_bytes:  # gRPC's own receive limit, here in the same units: the message's bytes
            raise ConnectError(
                Code.RESOURCE_EXHAUSTED,
                f"request is {size} bytes; this server takes at most {self._max_message_bytes} "
                f"(--max-message-bytes plus room for the fields)",
            )
        protocol = protocol_of(ctx.request_headers.get("content-type", ""))
        try:
            # aclosing: a caller who disconnects cancels or closes this generator, and the job's must close with it.
            caller = caller_of(ctx.client_address)
            async with contextlib.aclosing(self._servicer.stylize(request, protocol, caller)) as responses:
                async for response in responses:
                    yield response
        except JobError as error:
            raise connect_error(error) from None


class TokenCheck:
    """connectrpc metadata interceptor: refuses a call without the server's bearer token before its body is read."""

    def __init__(self, token: str) -> None:
        self._token = token
        self._throttle = auth.Throttle()

    async def on_start(self, ctx: RequestContext[Any, Any]) -> None:
        message = auth.refusal(self._token, ctx.request_headers.get("authorization"))
        if message is not None:
            auth.log_refusal(self._throttle, ctx.method.name, ctx.client_address, message)
            raise ConnectError(Code.UNAUTHENTICATED, message)

    async def on_end(self, token: None, ctx: RequestContext[Any, Any], error: Exception | None, /) -> None:
        return None


def _page_file(name: str) -> bytes:
    return resources.files("nst_server.transport").joinpath("page", name).read_bytes()


class HttpApp:
    """The ASGI application: the page, the service (Connect and gRPC-Web) and CORS for configured origins."""

    def __init__(self, connect_app: Any, allowed_origins: Iterable[str]) -> None:
        self._connect = connect_app
        self._origins = frozenset(allowed_origins)
        self._page = {path: (_page_file(name), content_type) for path, (name, content_type) in PAGE_FILES.items()}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        origin = headers.get("origin")
        allowed = origin is not None and ("*" in self._origins or origin in self._origins)
        cors: list[tuple[bytes, bytes]] = []
        if allowed and origin is not None:
            cors = [
                (b"access-control-allow-origin", origin.encode()),
                (b"access-control-expose-headers", _CORS_EXPOSE_HEADERS.encode()),
                (b"vary", b"Origin"),
            ]
        path, method = scope["path"], scope["method"]
        if method == "OPTIONS" and path.startswith(SERVICE_PATH):  # a browser's preflight
            if not allowed:
                await _respond(send, 403, b"origin not allowed (nst-server --http-allow-origin)\n", "text/plain")
                return
            preflight = [
                (b"access-control-allow-methods", b"POST, GET"),
                (b"access-control-allow-headers", _CORS_ALLOW_HEADERS.encode()),
                (b"access-control-max-age", b"7200"),
            ]
            await _respond(send, 204, b"", None, cors + preflight)
            return
        if path.startswith(SERVICE_PATH):
            content_type = headers.get("content-type", "")
            if content_type.startswith("application/grpc") and not content_type.startswith("application/grpc-web"):
                message = b"plain gRPC is served on the gRPC port (--port); this port speaks Connect and gRPC-Web\n"
                await _respond(send, 415, message, "text/plain")
                return
            await self._connect(scope, receive, _with_headers(send, cors) if cors else send)
            return
        page = self._page.get(path)
        if page is None or method not in ("GET", "HEAD"):
            await _respond(send, 404, b"not found\n", "text/plain")
            return
        body, content_type = page
        page_headers = [(b"cache-control", b"no-cache"), (b"content-security-policy", _PAGE_POLICY.encode())]
        await _respond(send, 200, body if method == "GET" else b"", content_type, page_headers)


async def _respond(
    send: Any, status: int, body: bytes, content_type: str | None, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    start = [(b"content-type", content_type.encode())] if content_type else []
    start += [(b"x-content-type-options", b"nosniff"), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


def _with_headers(send: Any, headers: list[tuple[bytes, bytes]]) -> Any:
    """``send`` that adds ``headers`` to the response's start."""

    async def sending(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return sending


class _EmbeddedServer(uvicorn.Server):
    """uvicorn on a loop it does not own: the process's signals stay with app.serve, which drains both ports."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None]:
        yield


class HttpServer:
    """The HTTP port, bound at construction (``port``), served by ``start`` on the running loop until ``stop``."""

    def __init__(self, config: ServerConfig, servicer: StyleTransferServicer, max_message_bytes: int) -> None:
        assert config.http_port is not None
        service = ConnectService(servicer, max_message_bytes)
        connect_app = StyleTransferServiceASGIApplication(
            service,
            interceptors=[TokenCheck(config.token)] if config.token is not None else [],
            read_max_bytes=max_message_bytes * _JSON_BODY_FACTOR,
        )
        self.app = HttpApp(connect_app, config.http_allowed_origins)
        host = config.host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, config.http_port))
        except OSError as error:
            self._socket.close()
            raise OSError(f"cannot serve HTTP on {config.host}:{config.http_port}: {error.strerror}") from error
        self._socket.listen(128)
        self._socket.setblocking(False)
        self.port: int = self._socket.getsockname()[1]
        self._server = _EmbeddedServer(
            uvicorn.Config(
                self.app,
                lifespan="off",
                ws="none",
                http="h11",
                log_config=None,  # the process's logging, not uvicorn's own
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=1,
                ssl_certfile=config.tls_cert,  # HTTPS with the gRPC port's certificate, when it has one
                ssl_keyfile=config.tls_key,
            )
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve from a task on the running loop; returns once the port accepts."""
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started and not self._task.done():  # uvicorn has no event for it; a few ticks
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raises what stopped it

    async def stop(self) -> None:
        """Close the port: open streams have ended by now (the drain cancelled them), idle connections close."""
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        self._socket.close()
