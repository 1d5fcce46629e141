"""Assemble and run the server: models, servicer, health, reflection; drain and stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc

from . import auth
from .admission import Admission
from .config import ServerConfig
from .errors import ShuttingDown
from .graphs import LossGraphs
from .metrics import Metrics
from .servicer import StyleTransferServicer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StyleTransferService"].full_name
# Room for the request's images on top of the pixel data itself.
_MESSAGE_OVERHEAD_BYTES = 1 << 20


def load_models(config: ServerConfig) -> list[LossGraphs]:
    """Load every model directory once; all jobs share the sessions."""
    return [LossGraphs(directory, config.device, config.threads) for directory in config.model_dirs]


async def serve(config: ServerConfig, models: list[LossGraphs]) -> None:
    """Serve until SIGTERM or SIGINT, then drain: NOT_SERVING, refuse new jobs, finish or cancel the rest."""
    limit = config.max_message_bytes + _MESSAGE_OVERHEAD_BYTES
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
    ]
    if config.max_connection_age_s > 0:
        # GOAWAY after this age makes clients open a new connection, re-resolving a dns:/// target on the way, so
        # replicas added by the autoscaler get their share. The age's grace stays gRPC's default (unlimited):
        # streams already running on the old connection finish however long they take.
        options.append(("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)))
    interceptors = [auth.BearerTokenInterceptor(config.token)] if config.token is not None else []
    server = grpc.aio.server(options=options, interceptors=interceptors)
    admission = Admission(config.max_concurrent, config.max_queue)
    metrics = Metrics(admission, models)  # recorded always (it is cheap), published only when asked for
    servicer = StyleTransferServicer(models, config, admission, metrics)
    pb_grpc.add_StyleTransferServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = _listen(server, config)
    if port == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port}")
    if config.metrics_port is not None:
        metrics_host = config.metrics_host or config.host
        log.info("metrics on %s:%d", metrics_host, metrics.serve(metrics_host, config.metrics_port))
    # Handlers before the listener starts: a SIGTERM that follows "listening on" at once still drains (exit 0).
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await server.start()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("access: %s", _access_summary(config))
    log.info("listening on %s:%d (device %s)", config.host, port, ", ".join(sorted({m.device for m in models})))
    await stopping.wait()

    log.info("shutting down: NOT_SERVING for %.1fs, then up to %.1fs for running jobs", config.drain_s, config.grace_s)
    admission.close()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await asyncio.sleep(config.drain_s)
    try:
        await asyncio.wait_for(admission.wait_idle(), timeout=config.grace_s)
    except TimeoutError:
        log.warning("grace period over: cancelling %d running and %d queued jobs", admission.running, admission.queued)
        servicer.stop_all(
            ShuttingDown(f"server shut down; the job was cancelled after a {config.grace_s:g}s grace period")
        )
        try:
            await asyncio.wait_for(admission.wait_idle(), timeout=config.grace_s)
        except TimeoutError:  # an evaluation longer than the grace period: stop serving anyway, still exit 0
            log.warning("%d jobs did not stop within a further %.1fs; exiting", admission.running, config.grace_s)
    await server.stop(grace=1.0)
    metrics.close()
    log.info("stopped")


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
