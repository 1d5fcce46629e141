"""Assemble and run the server: models, servicer, health, reflection; drain and stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nst.v1 import style_transfer_pb2 as pb

from .config import ServerConfig
from .domain import memory
from .domain.errors import ShuttingDown
from .domain.model import LossModel
from .runtime.graphs import LossGraphs
from .transport import auth, codec
from .transport.admission import Admission
from .transport.connect import HttpServer
from .transport.metrics import Metrics
from .transport.servicer import StyleTransferServicer, add_to_server

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StyleTransferService"].full_name
# Room for the request's images on top of the pixel data itself.
_MESSAGE_OVERHEAD_BYTES = 1 << 20
KEEPALIVE_TIMEOUT_MS = 20_000


def load_models(config: ServerConfig) -> list[LossGraphs]:
    """Load every model directory once; all jobs share the sessions."""
    models = [
        LossGraphs(
            directory,
            config.device,
            config.threads,
            tile_px=config.tile_px,
            placement=config.optimizer_placement,
            cuda_graphs=config.cuda_graphs,
            cuda=config.cuda,
        )
        for directory in config.model_dirs
    ]
    for model in models:
        model.prepare_circular()
        model.prepare_steps()
    return models


class Server:
    """One assembled server: gRPC (style service, health, reflection), metrics and the optional HTTP port (Connect,
    gRPC-Web, the page), bound but not yet started."""

    def __init__(self, config: ServerConfig, models: Sequence[LossModel]) -> None:
        self.config = config
        self.models = models
        receive_limit = config.limits.max_message_bytes + _MESSAGE_OVERHEAD_BYTES
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", receive_limit),
            # Apart from the request's: every job's result is checked against it before the job starts.
            ("grpc.max_send_message_length", codec.send_limit(config)),
        ]
        if config.keepalive_s > 0:
            # Finds connections whose peer vanished without a word (a NAT dropped it, a laptop slept): pings carry on
            # through a long evaluation that sends no data, and an unanswered one closes the connection.
            options += [
                ("grpc.keepalive_time_ms", int(config.keepalive_s * 1000)),
                ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                ("grpc.http2.max_pings_without_data", 0),
            ]
        if config.max_connection_idle_s > 0:
            options.append(("grpc.max_connection_idle_ms", int(config.max_connection_idle_s * 1000)))
        if config.max_connection_age_s > 0:
            # GOAWAY after this age makes clients open a new connection, re-resolving a dns:/// target on the way,
            # so replicas added by the autoscaler get their share. The age's grace stays gRPC's default
            # (unlimited): streams already running on the old connection finish however long they take.
            options.append(("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)))
        interceptors = [auth.BearerTokenInterceptor(config.token)] if config.token is not None else []
        self.grpc = grpc.aio.server(options=options, interceptors=interceptors)
        self.memory_budget, self.memory_summary = memory_budget(config.max_memory_bytes)
        self.admission = Admission(
            config.limits.max_concurrent, config.limits.max_queue, self.memory_budget,
            max_per_caller=config.limits.max_jobs_per_caller, max_queue_wait_s=config.max_queue_wait_s,
        )  # fmt: skip
        self.metrics = Metrics(self.admission, models)  # recorded always (it is cheap), published only when asked
        self.servicer = StyleTransferServicer(models, config, self.admission, self.metrics)
        add_to_server(self.servicer, self.grpc)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc)
        self.port = _listen(self.grpc, config)
        if self.port == 0:
            raise OSError(f"cannot listen on {config.host}:{config.port}")
        # The same servicer behind the HTTP port: one queue, one set of limits and metrics, one drain.
        self.http = HttpServer(config, self.servicer, receive_limit) if config.http_port is not None else None
        self.http_port = self.http.port if self.http is not None else None

    async def start(self) -> None:
        """Publish metrics (if configured), start the listener and answer SERVING."""
        config = self.config
        if config.metrics_port is not None:
            log.info(
                "metrics on %s:%d", config.metrics_host, self.metrics.serve(config.metrics_host, config.metrics_port)
            )
        await self.grpc.start()
        if self.http is not None:
            await self.http.start()
            scheme = "https" if config.tls_cert is not None else "http"
            log.info("Connect, gRPC-Web and the page on %s://%s:%d/", scheme, config.host, self.http_port)
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("access: %s", _access_summary(config))
        log.info("memory: %s", self.memory_summary)
        devices = ", ".join(sorted({model.device for model in self.models}))
        log.info("listening on %s:%d (device %s)", config.host, self.port, devices)

    async def shutdown(self) -> None:
        """Drain: NOT_SERVING for drain_s, refuse new jobs, give running ones grace_s, cancel the rest, stop."""
        config, admission = self.config, self.admission
        log.info(
            "shutting down with %d running and %d queued jobs: NOT_SERVING for %.1fs, then up to %.1fs for them",
            admission.running,
            admission.queued,
            config.drain_s,
            config.grace_s,
        )
        admission.close()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await asyncio.sleep(config.drain_s)
        try:
            await asyncio.wait_for(admission.wait_idle(), timeout=config.grace_s)
        except TimeoutError:
            log.warning(
                "grace period over: cancelling %d running and %d queued jobs", admission.running, admission.queued
            )
            self.servicer.stop_all(
                ShuttingDown(f"server shut down; the job was cancelled after a {config.grace_s:g}s grace period")
            )
            try:
                await asyncio.wait_for(admission.wait_idle(), timeout=config.grace_s)
            except TimeoutError:  # an evaluation longer than the grace period: stop serving anyway, still exit 0
                log.warning("%d jobs did not stop within a further %.1fs; exiting", admission.running, config.grace_s)
        await self.grpc.stop(grace=1.0)
        if self.http is not None:
            await self.http.stop()
        self.metrics.close()
        log.info("stopped")


def memory_budget(max_memory_bytes: int | None) -> tuple[int, str]:
    """What jobs may reserve together (``max_memory_bytes``, or the default, less this process's resident memory
    now, with its models loaded), and a line saying so for the log.

    Raises:
        ValueError: nothing is left for jobs.
    """
    total, source = (max_memory_bytes, "--max-memory") if max_memory_bytes else memory.default_max_memory()
    resident = memory.resident_bytes()
    if total <= resident:
        raise ValueError(
            f"--max-memory {memory.format_bytes(total)} ({source}) leaves nothing for jobs: the server already holds "
            f"{memory.format_bytes(resident)} with its models loaded"
        )
    summary = (
        f"{memory.format_bytes(total - resident)} for jobs: {memory.format_bytes(total)} ({source}) less "
        f"{memory.format_bytes(resident)} resident"
    )
    return total - resident, summary


def create_server(config: ServerConfig, models: Sequence[LossModel]) -> Server:
    """The whole server for ``config`` over loaded ``models``, bound to its port (``server.port``; config.port 0
    picks a free one) but not started. Call it on the event loop that will run it."""
    return Server(config, models)


async def serve(config: ServerConfig, models: Sequence[LossModel]) -> None:
    """Serve until SIGTERM or SIGINT, then drain: NOT_SERVING, refuse new jobs, finish or cancel the rest."""
    server = create_server(config, models)
    # Handlers before the listener starts: a SIGTERM that follows "listening on" at once still drains (exit 0).
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await server.start()
    await stopping.wait()
    await server.shutdown()


def _listen(server: grpc.aio.Server, config: ServerConfig) -> int:
    """Bind the listener, with TLS when a certificate is configured; the bound port (0 if binding failed)."""
    address = f"{config.host}:{config.port}"
    if config.tls_cert is None or config.tls_key is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, auth.tls_credentials(config.tls_cert, config.tls_key))


def _access_summary(config: ServerConfig) -> str:
    """Whether TLS and authentication are on, for the start-up log; never the token itself."""
    tls = f"TLS (certificate {config.tls_cert})" if config.tls_cert is not None else "plaintext (no TLS)"
    token = (
        f"bearer token required on every call but {', '.join(sorted(auth.OPEN_SERVICES))}"
        if config.token is not None
        else "no authentication"
    )
    return f"{tls}, {token}"
