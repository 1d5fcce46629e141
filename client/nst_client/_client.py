"""StyleClient (a channel to one server) and StyleCall (one running Stylize job)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nst.events import Event, Result
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from PIL import Image

from . import _convert
from ._convert import StyleInput
from ._types import HealthStatus, ImageInput, ServerInfo, StyleTransferError, StylizeOptions

log = logging.getLogger(__name__)

_Client = TypeVar("_Client")
_Parameters = ParamSpec("_Parameters")


def _run_to_the_end(
    start: Callable[Concatenate[_Client, _Parameters], StyleCall],
) -> Callable[Concatenate[_Client, _Parameters], Image.Image]:
    """``StyleClient.stylize_image`` from ``stylize``: the same parameters (for type checkers and ``help()``
    alike), but the job is run to the end and its styled image returned."""

    def stylize_image(self: _Client, /, *args: _Parameters.args, **kwargs: _Parameters.kwargs) -> Image.Image:
        with start(self, *args, **kwargs) as call:
            return call.result().to_image()

    owner = start.__qualname__.rpartition(".")[0]
    stylize_image.__qualname__ = f"{owner}.{stylize_image.__name__}"
    stylize_image.__signature__ = inspect.signature(start).replace(return_annotation="Image.Image")  # type: ignore[attr-defined]  # read by inspect and help()
    stylize_image.__doc__ = """Run a job to the end and return the styled image; the arguments are ``stylize``'s.

        Raises:
            ValueError, OSError: as ``stylize``.
            StyleTransferError: the call failed.
        """
    return stylize_image


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StyleTransferService"].full_name
# The server's default message limit (64 MiB) plus room for the rest of a Result: results must always fit.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024 + 1024 * 1024
# gRPC retries a call transparently only until the first response message (or header) arrives; after that the
# call is committed. For Stylize the first response is `queued` or `started`, so a server that is briefly
# unreachable or restarting (UNAVAILABLE) is retried with backoff, while a job that has started is never re-run.
_SERVICE_CONFIG = {
    # Calls share one long-lived HTTP/2 connection, so balancing must be client-side: with a dns:/// target that
    # resolves to several addresses (a headless Service's pods) spread calls over all of them; one address: no-op.
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": SERVICE_NAME}, {"service": "grpc.health.v1.Health"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.2s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}
_CHANNEL_OPTIONS = [
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(_SERVICE_CONFIG)),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # A request larger than the retry buffer (256 KiB by default) is committed at once and never retried;
    # images are usually larger, so buffer up to a whole request.
    ("grpc.per_rpc_retry_buffer_size", MAX_MESSAGE_BYTES),
]


class StyleCall:
    """One Stylize job in flight: iterate it for its events (once); leaving the loop early cancels the job."""

    def __init__(self, call: Any) -> None:
        self._call = call  # the stub's response iterator, which is also a grpc.Call
        self._iterated = False

    def __iter__(self) -> Iterator[Event]:
        """The job's events in order: ``Queued``..., ``Started``, ``Progress``/``Preview``..., ``Result`` last.

        Raises:
            StyleTransferError: the call failed (``.code`` says why; CANCELLED after ``cancel()``).
        """
        if self._iterated:
            raise RuntimeError("a StyleCall's events can be iterated only once")
        self._iterated = True
        return self._events()

    def _events(self) -> Iterator[Event]:
        try:
            with _convert.rpc_errors():
                for response in self._call:
                    event = _convert.to_event(response)
                    if event is not None:
                        yield event
        finally:
            # Runs on break, on an exception in the caller's loop body, on Ctrl-C and when the iterator is
            # garbage-collected: the server stops the job. A no-op once the call has ended.
            self._call.cancel()

    def result(self) -> Result:
        """Wait for the job to finish and return its final ``Result`` (other events are dropped).

        Raises:
            StyleTransferError: the call failed, or the stream ended without a result.
        """
        for event in self:
            if isinstance(event, Result):
                return event
        raise StyleTransferError("the server ended the stream without a result", grpc.StatusCode.INTERNAL)

    def cancel(self) -> None:
        """Cancel the job (the server stops computing); iterating afterwards raises CANCELLED.

        Raises:
            Nothing: cancelling a finished call does nothing.
        """
        self._call.cancel()

    def __enter__(self) -> StyleCall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class StyleClient:
    """A connection to one style transfer server; use it as a context manager, or call ``close()``.

    ``tls`` selects TLS (``root_certificates``: PEM bytes, or None for the system roots). ``token`` is sent
    as ``authorization: Bearer <token>`` on every call.
    """

    def __init__(
        self, address: str, *, tls: bool = False, root_certificates: bytes | None = None, token: str | None = None
    ) -> None:
        """Make the channel (lazily: nothing connects until the first call).

        Raises:
            ValueError: ``root_certificates`` without ``tls``, or a token that cannot be sent as metadata.
        """
        if root_certificates is not None and not tls:
            raise ValueError("root_certificates needs tls=True")
        if token is not None and not (token and token.isascii() and token.isprintable()):
            raise ValueError("token: must be non-empty printable ASCII (no newlines)")
        self.address = address
        self._metadata: tuple[tuple[str, str], ...] = ()
        if tls:
            credentials = grpc.ssl_channel_credentials(root_certificates)
            if token is not None:
                # Call credentials attach the token to every call, and gRPC only sends them over TLS.
                token_credentials = grpc.access_token_call_credentials(token)
                credentials = grpc.composite_channel_credentials(credentials, token_credentials)
            self._channel = grpc.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)
        else:
            if token is not None:
                # gRPC refuses call credentials on an insecure channel, so the header goes in each call's metadata.
                log.warning(
                    "sending a bearer token to %s over plaintext; use tls=True outside a trusted network", address
                )
                self._metadata = (("authorization", f"Bearer {token}"),)
            self._channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
        self._stub = pb_grpc.StyleTransferServiceStub(self._channel)
        # types-grpcio-health-checking's HealthStub declares no methods: the stub is used as the Any it is.
        self._health: Any = health_pb2_grpc.HealthStub(self._channel)

    def describe(self, *, timeout_s: float | None = None) -> ServerInfo:
        """The models the server runs (the first is its default) and the limits it enforces.

        Raises:
            StyleTransferError: the call failed (e.g. UNAVAILABLE: server unreachable).
        """
        with _convert.rpc_errors():
            response = self._stub.DescribeModel(pb.DescribeModelRequest(), timeout=timeout_s, metadata=self._metadata)
        return _convert.server_info(response)

    def health(self, service: str = SERVICE_NAME, *, timeout_s: float | None = None) -> HealthStatus:
        """The serving status of ``service`` (the style transfer service by default; "" for the whole server).

        Raises:
            StyleTransferError: the call failed (e.g. UNAVAILABLE: server unreachable).
        """
        request = health_pb2.HealthCheckRequest(service=service)
        with _convert.rpc_errors():
            response = self._health.Check(request, timeout=timeout_s, metadata=self._metadata)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)  # type: ignore[return-value]

    def stylize(
        self,
        /,
        content: ImageInput | None,
        styles: StyleInput | Sequence[StyleInput] | None,
        options: StylizeOptions | None = None,
        *,
        timeout_s: float | None = None,
        model: str | None = None,
        **fields: Any,
    ) -> StyleCall:
        """Start a job and return its call; iterate the call for the events.

        ``content`` and each of ``styles`` (one image or a sequence) is a path, encoded bytes, a PIL image or
        an HxWx3 array (uint8, or float in [0, 1]); a style may also be a ``Style`` with its own blend weight,
        scale and masks (spatial control: ``Style.mask`` says where it applies, ``Style.source_mask`` which part
        of the painting counts; with the options ``content_only_mask`` where the photo is kept, and
        ``tileable=True`` for an output that wraps without a seam). ``content=None`` synthesises a texture
        (``width_px`` x ``height_px``, default ``max_side_px`` square); no styles (None or empty) reconstructs
        the content; one of them is required.
        The options are ``StylizeOptions``' fields, given as ``options`` or as keyword arguments (which replace
        its fields): e.g. ``max_side_px=512, max_evaluations=300``. Every option left None (or an empty
        sequence) is not sent: the server's default applies (see ``StylizeOptions`` and the API's
        StylizeOptions). ``model`` picks a loaded model (the server's first by default). ``timeout_s`` is the
        deadline of the whole job.

        Raises:
            TypeError: a keyword that is not an option.
            ValueError: a bad option value (the message names the allowed ones) or image array, or neither a
                content nor a style image.
            OSError: a path cannot be read.
            StyleTransferError: while iterating, when the call fails (INVALID_ARGUMENT names the bad field).
        """
        chosen = dataclasses.replace(options or StylizeOptions(), **fields)
        request = _convert.stylize_request(content, styles, model, chosen)
        with _convert.rpc_errors():
            call = self._stub.Stylize(request, timeout=timeout_s, metadata=self._metadata)
        return StyleCall(call)

    # ``stylize``'s parameters, not a copy of them: see ``_run_to_the_end``.
    stylize_image = _run_to_the_end(stylize)

    def close(self) -> None:
        """Close the channel; calls still running are cancelled.

        Raises:
            Nothing.
        """
        self._channel.close()

    def __enter__(self) -> StyleClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
