"""Who may call: TLS credentials for the listener, and a bearer token checked before any handler runs.

The token comes from ``--token-file`` or, failing that, ``$NST_TOKEN``. Every call must carry it as
``authorization: Bearer <token>`` except the standard health service, which stays open so that Docker's
HEALTHCHECK and Kubernetes' native gRPC probes (which cannot send metadata) keep working. A refused call is
answered UNAUTHENTICATED by the interceptor itself: the servicer never sees it, so nothing is decoded or computed.
"""

from __future__ import annotations

import hmac
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health

log = logging.getLogger(__name__)

TOKEN_ENV = "NST_TOKEN"
OPEN_SERVICES = frozenset({health.SERVICE_NAME})  # probes must work without the token
MISSING = (
    "missing bearer token: send the metadata (over HTTP, the header) 'authorization: Bearer <token>' "
    "(nst: --token-file or $NST_TOKEN)"
)
WRONG = "wrong bearer token"


REFUSAL_LOG_INTERVAL_S = 10.0


class AccessError(ValueError):
    """A TLS or token setting that cannot work; the message names the flag and the problem."""


def read_token(token_file: Path | None, environ: Mapping[str, str]) -> str | None:
    """The token to require: ``token_file``'s content if given, else ``$NST_TOKEN`` if set, else None (no auth).

    Surrounding whitespace is stripped (files end in a newline). A set but empty source is an error rather than
    "no authentication", so that an empty secret never silently opens the server.

    Raises:
        AccessError: the token is empty or cannot be sent as gRPC metadata.
        OSError: ``token_file`` cannot be read.
    """
    if token_file is not None:
        token, source = token_file.read_text().strip(), f"--token-file {token_file}"
    elif TOKEN_ENV in environ:
        token, source = environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    else:
        return None
    if not token:
        raise AccessError(f"{source}: the token is empty; give a non-empty token or neither source")
    if not (token.isascii() and token.isprintable()):
        raise AccessError(f"{source}: the token must be printable ASCII (it travels as gRPC metadata)")
    return token


def tls_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    """Server credentials from a PEM certificate chain and its private key, checked to belong together.

    gRPC itself only says "Failed to bind" for a bad pair, so the pair is loaded once with the ssl module first.

    Raises:
        OSError: a file cannot be read, or the two are not a PEM certificate chain and its matching key.
    """
    chain, private_key = cert.read_bytes(), key.read_bytes()
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as error:
        problem = f"not a PEM certificate chain and its private key ({error})"
        raise OSError(f"--tls-cert {cert}, --tls-key {key}: {problem}") from None
    return grpc.ssl_server_credentials([(private_key, chain)])


def _bearer(authorization: str | None) -> str | None:
    """The credentials of an ``authorization: Bearer ...`` value (scheme case-insensitive), or None."""
    scheme, _, credentials = (authorization or "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


def refusal(token: str, authorization: str | None) -> str | None:
    """Why a call whose ``authorization`` header or metadata is this (None: absent) is refused; None if it may pass.

    The one check of every protocol: gRPC's interceptor here, Connect's and gRPC-Web's in transport.connect.
    """
    given = _bearer(authorization)
    if given is None:
        return MISSING
    return None if hmac.compare_digest(given.encode(), token.encode()) else WRONG


def _authorization(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    """The call's ``authorization`` metadata, or None."""
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            return value
    return None


class Throttle:
    """At most one log line per ``interval_s``: a caller that repeats a refused call cannot fill the log."""

    def __init__(self, interval_s: float = REFUSAL_LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._next = float("-inf")
        self._suppressed = 0

    def allow(self) -> int | None:
        """None to stay silent now; else how many lines were held back since the last one (to say so)."""
        now = self._clock()
        if now < self._next:
            self._suppressed += 1
            return None
        self._next = now + self._interval_s
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


def log_refusal(throttle: Throttle, method: str, client: str | None, message: str) -> None:
    """One WARNING for a refused call, unless ``throttle`` says a line went out too recently; every protocol's."""
    suppressed = throttle.allow()
    if suppressed is not None:
        more = f" ({suppressed} more refused since the last such line)" if suppressed else ""
        log.warning("refused %s from %s: %s%s", method, client, message.split(":")[0], more)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without the right bearer token with UNAUTHENTICATED, except to ``open_services``; logs
    the refusals at most once per REFUSAL_LOG_INTERVAL_S, with a count of those it did not log."""

    def __init__(self, token: str, open_services: frozenset[str] = OPEN_SERVICES, throttle: Throttle | None = None,
                 ) -> None:  # fmt: skip
        self._token = token
        self._open = open_services
        self._throttle = throttle or Throttle()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method  # "/package.Service/Method"
        handler = await continuation(handler_call_details)
        if handler is None or method.split("/")[1] in self._open:
            return handler  # unknown methods stay UNIMPLEMENTED
        message = refusal(self._token, _authorization(handler_call_details.invocation_metadata))
        return handler if message is None else _refusal(handler, method, message, self._throttle)


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, message: str, throttle: Throttle
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` that only aborts; the request is left undeserialised."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        log_refusal(throttle, method, context.peer(), message)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    factories: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    factory = factories[(handler.request_streaming, handler.response_streaming)]
    return factory(refuse, response_serializer=handler.response_serializer)
