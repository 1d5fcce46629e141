"""Prometheus metrics on their own HTTP port: jobs by state and outcome, seconds per job and iteration, evaluations.

The registry is this server's own, not prometheus_client's global one, so that a scrape shows exactly these
series and two servers in one process (tests) do not collide.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from nst.events import Event, Progress
from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..domain.model import LossModel
from .admission import Admission

# From a small image on a GPU (milliseconds) to a large one on a CPU (seconds per iteration, many minutes a job).
ITERATION_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METRICS_CONNECTIONS = 8  # served at once; a scrape takes milliseconds
METRICS_TIMEOUT_S = 5.0  # for a connection to send its request
JOB_BUCKETS = (0.05, 0.25, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)


class _StateCollector(Collector):
    """Values read at scrape time rather than kept in step with the code that changes them."""

    def __init__(self, admission: Admission, models: Sequence[LossModel]) -> None:
        self._admission = admission
        self._models = models

    def collect(self) -> Iterator[Metric]:
        # Runs on the HTTP server's thread: reading ints off the event loop's Admission is safe under the GIL,
        # and a scrape only needs a consistent-enough snapshot.
        yield GaugeMetricFamily("nst_jobs_running", "Stylize jobs computing now.", value=self._admission.running)
        yield GaugeMetricFamily(
            "nst_jobs_queued",
            "Stylize jobs waiting for a running slot; the autoscaling signal (see deploy/kubernetes/hpa.yaml).",
            value=self._admission.queued,
        )
        yield GaugeMetricFamily(
            "nst_jobs_max_running", "The --max-concurrent limit.", value=self._admission.max_running
        )
        yield GaugeMetricFamily("nst_jobs_max_queued", "The --max-queue limit.", value=self._admission.max_queued)
        yield GaugeMetricFamily(
            "nst_jobs_held",
            "Jobs holding memory: running, or still finishing an evaluation or a decode after their caller left.",
            value=self._admission.held,
        )
        yield GaugeMetricFamily(
            "nst_memory_reserved_bytes", "Estimated peak memory of the jobs held.", value=self._admission.reserved_bytes
        )
        if self._admission.memory_budget is not None:
            yield GaugeMetricFamily(
                "nst_memory_budget_bytes",
                "What jobs may reserve together: --max-memory less the server's own resident memory at start.",
                value=self._admission.memory_budget,
            )
        device = InfoMetricFamily("nst_device", "The device each loaded model runs on.", labels=["model"])
        for model in self._models:
            device.add_metric([model.name], {"device": model.device})
        yield device


class JobRecorder:
    """One job's view of the metrics: turns its events into iteration times and evaluation counts."""

    def __init__(self, metrics: Metrics, protocol: str) -> None:
        self._metrics = metrics
        self._protocol = protocol
        # Progress events carry running totals; the metrics want what changed since the previous one.
        self._elapsed_s = 0.0
        self._evaluations = 0

    def event(self, event: Event) -> None:
        """Record a Progress event (the first iteration is timed from the end of warm-up); ignore the rest."""
        if isinstance(event, Progress):
            self._metrics.iteration_seconds.observe(max(event.elapsed_s - self._elapsed_s, 0.0))
            self._metrics.evaluations.inc(max(event.evaluations - self._evaluations, 0))
            self._elapsed_s, self._evaluations = event.elapsed_s, event.evaluations

    def finished(self, outcome: str, code: grpc.StatusCode, seconds: float) -> None:
        """Count the job's ending and time it from request to last response."""
        self._metrics.finished.labels(outcome=outcome, code=code.name, protocol=self._protocol).inc()
        self._metrics.job_seconds.labels(outcome=outcome).observe(seconds)


class _BoundedServer(socketserver.ThreadingMixIn, WSGIServer):
    """prometheus_client's threaded server, bounded: at most METRICS_CONNECTIONS connections are served at once
    (more are closed at once), and each gets METRICS_TIMEOUT_S to send its request. Unbounded, every idle socket
    held a thread (200 sockets, +200 threads)."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(METRICS_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        request.settimeout(METRICS_TIMEOUT_S)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Metrics:
    """The server's metrics, in a registry of their own; ``serve`` publishes them for Prometheus to scrape."""

    def __init__(self, admission: Admission, models: Sequence[LossModel]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(admission, models))
        self.finished = Counter(
            "nst_jobs_finished",
            "Stylize calls ended, by outcome (ok, cancelled or the error's name), gRPC status code (Connect's is its "
            "fixed translation) and protocol (grpc, connect or grpc-web).",
            ["outcome", "code", "protocol"],
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "nst_job_seconds",
            "Seconds from a Stylize request to its last response, queueing included, by outcome.",
            ["outcome"],
            buckets=JOB_BUCKETS,
            registry=self.registry,
        )
        self.iteration_seconds = Histogram(
            "nst_iteration_seconds",
            "Wall-clock seconds per optimiser iteration (an L-BFGS iteration may take several evaluations).",
            buckets=ITERATION_BUCKETS,
            registry=self.registry,
        )
        self.evaluations = Counter(
            "nst_evaluations",
            "Loss and gradient evaluations of VGG19; rate() of it is evaluations per second.",
            registry=self.registry,
        )
        self._http: WSGIServer | None = None

    def job(self, protocol: str) -> JobRecorder:
        """A recorder for one new job, called over ``protocol`` (grpc, connect or grpc-web)."""
        return JobRecorder(self, protocol)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on ``host:port`` (0 picks a free port) from a daemon thread; returns the port."""
        try:
            self._http = make_server(host.strip("[]"), port, make_wsgi_app(self.registry), _BoundedServer, _Quiet)
        except OSError as error:
            raise OSError(f"cannot serve metrics on {host}:{port}: {error.strerror or error}") from error
        threading.Thread(target=self._http.serve_forever, name="metrics", daemon=True).start()
        return self._http.server_port

    def close(self) -> None:
        """Stop serving /metrics, if it was served."""
        if self._http is not None:
            self._http.shutdown()  # waits (up to half a second) for the serving loop to notice
            self._http.server_close()
            self._http = None
