"""Servers to test and measure against: in this process on port 0, or as a real `nst-server` process.

The one harness of the tests (tests/) and the benchmarks (bench/): ``running_server`` starts either kind with the
same command-line flags and stops it on exit; ``poll_until`` is the one way to wait for something to become true.
Job outcomes come from the server's metrics (``nst_jobs_finished``), not from its prose log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from .__main__ import build_parser, config_from_args
from .app import Server, create_server
from .config import Device, Placement, ServerConfig
from .domain.model import LossModel
from .runtime.graphs import LossGraphs

T = TypeVar("T")
# Metric samples by name and labels, e.g. ("nst_jobs_running", frozenset()) -> 0.0.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
_LISTENING = re.compile(r"listening on ([\d.]+):(\d+)")
_METRICS = re.compile(r"metrics on ([\d.]+:\d+)")
_HTTP = re.compile(r"the page on (https?://[\d.]+:\d+)/")
_FINISHED = "nst_jobs_finished_total"


def poll_until(predicate: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.05) -> T:
    """``predicate()``'s first truthy value, asking every ``interval_s``; AssertionError naming ``what`` after
    ``timeout_s``. The timeout only bounds a wait for something that must happen: it never measures anything."""
    deadline = time.monotonic() + timeout_s
    while True:
        if value := predicate():
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


def parse_samples(text: str) -> Samples:
    """Prometheus text exposition to samples by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def outcomes_of(samples: Samples) -> Counter[str]:
    """Finished Stylize calls by outcome (ok, cancelled, or the error's type name), from the metrics."""
    counts: Counter[str] = Counter()
    for (name, labels), value in samples.items():
        if name == _FINISHED:
            counts[dict(labels)["outcome"]] += int(value)
    return counts


class _Harness:
    """What both kinds of server offer a test: address, log, health, metrics, outcomes."""

    address: str
    http_url: str = ""  # http://HOST:PORT of the HTTP port (Connect, gRPC-Web, the page) when --http-port is given

    def log_lines(self) -> list[str]:
        raise NotImplementedError

    def scrape(self) -> Samples:
        raise NotImplementedError

    def log(self) -> str:
        return "\n".join(self.log_lines())

    def wait_logged(self, pattern: str, timeout_s: float = 30.0, after: int = 0) -> str:
        """The first log line matching ``pattern`` (among those after the first ``after``), waiting for it."""

        def found() -> str | None:
            return next((line for line in self.log_lines()[after:] if re.search(pattern, line)), None)

        try:
            return poll_until(found, timeout_s, f"a log line matching {pattern!r}")
        except AssertionError as error:
            raise AssertionError(f"{error}; log:\n{self.log()}") from None

    def outcomes(self) -> Counter[str]:
        """Every finished Stylize call so far, by outcome."""
        return outcomes_of(self.scrape())

    def wait_outcomes(self, count: int, since: Counter[str] | None = None, timeout_s: float = 30.0) -> Counter[str]:
        """Outcomes of the calls finished after ``since`` (an earlier ``outcomes()``; default: all), once there are
        at least ``count`` of them. A call is counted just after its caller has heard how it ended."""
        before = since if since is not None else Counter()

        def enough() -> Counter[str] | None:
            counts = self.outcomes() - before
            return counts if counts.total() >= count else None

        try:
            return poll_until(enough, timeout_s, f"{count} finished jobs")
        except AssertionError as error:
            raise AssertionError(f"{error} (have {dict(self.outcomes() - before)}); log:\n{self.log()}") from None

    def wait_outcome(self, outcome: str, since: Counter[str], timeout_s: float = 30.0) -> None:
        """Wait until a call has finished with ``outcome`` after ``since`` (an earlier ``outcomes()``), whatever
        else finished meanwhile."""
        try:
            poll_until(lambda: (self.outcomes() - since)[outcome] >= 1, timeout_s, f"a job to end {outcome}")
        except AssertionError as error:
            raise AssertionError(f"{error} (have {dict(self.outcomes() - since)}); log:\n{self.log()}") from None

    def health(self, service: str = "") -> int:
        with grpc.insecure_channel(self.address) as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            # types-grpcio-health-checking's HealthStub declares no methods: the stub is used as the Any it is.
            stub: Any = health_pb2_grpc.HealthStub(channel)
            status: int = stub.Check(request, timeout=5).status
            return status


@dataclass
class ServerProcess(_Harness):
    """A real `nst-server` process, its address and everything it has logged so far."""

    process: subprocess.Popen[str]
    address: str = ""
    lines: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    def drain_log(self) -> None:
        """Read the process's stderr into ``lines`` until it closes (run it on a thread)."""
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if match := _HTTP.search(line):
                self.http_url = match.group(1)
            if match := _LISTENING.search(line):
                self.address = f"{match.group(1)}:{match.group(2)}"
                self._ready.set()
        self._ready.set()

    def log_lines(self) -> list[str]:
        return list(self.lines)

    def memory_mib(self, field: str = "VmRSS") -> float:
        """A memory field of the process's /proc/PID/status in MiB: VmRSS (resident now) or VmHWM (its peak)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no {field} for pid {self.process.pid}")

    def scrape(self) -> Samples:
        """The server's Prometheus metrics now, over HTTP."""
        match = _METRICS.search(self.wait_logged(r"metrics on"))
        assert match, self.log()
        with urllib.request.urlopen(f"http://{match[1]}/metrics", timeout=10) as response:
            return parse_samples(response.read().decode())

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then the exit status (killing it if it hangs, which fails the caller's assertion).

        A server that is already shutting down (a test sent the signal) is only waited for: a second SIGTERM that
        lands after its event loop has closed would meet the default disposition and kill it.
        """
        if self.process.poll() is None and not any("shutting down" in line for line in self.log_lines()):
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -9


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without $NST_TOKEN (a developer's own would turn on auth), plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if name != "NST_TOKEN"}
    return env | dict(extra or {})


def start_server(
    model_dirs: Sequence[Path],
    *args: str,
    timeout_s: float = 60.0,
    env: Mapping[str, str] | None = None,
    metrics: bool = True,
) -> ServerProcess:
    """Start `python -m nst_server` on port 0 and wait until it says where it listens; ``env`` adds variables.

    With ``metrics`` they are published on a free port unless ``args`` say where, so that ``outcomes()`` can read
    them; a benchmark of the bare server passes False.
    """
    command = [sys.executable, "-m", "nst_server", "--port", "0"]
    for model_dir in model_dirs:
        command += ["--model", str(model_dir)]
    if metrics and "--metrics-port" not in args:
        command += ["--metrics-port", "0"]
    process = subprocess.Popen(
        [*command, *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=server_env(env)
    )
    server = ServerProcess(process)
    threading.Thread(target=server.drain_log, daemon=True).start()
    if not server._ready.wait(timeout_s) or not server.address:
        server.terminate(5)
        raise AssertionError(f"server did not start; log:\n{server.log()}")
    return server


class _Lines(logging.Handler):
    """Keeps the formatted lines the server's loggers emit while an in-process server runs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class InProcessServer(_Harness):
    """``create_server`` on its own event loop in a background thread of this process, on a free port."""

    def __init__(self, config: ServerConfig, models: Sequence[LossModel]) -> None:
        self.config = config
        self._models = models
        self._started = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.server: Server | None = None
        self._lines = _Lines()
        self._thread = threading.Thread(target=self._run, name="nst-server", daemon=True)

    def start(self, timeout_s: float = 60.0) -> InProcessServer:
        logger = logging.getLogger("nst_server")
        logger.addHandler(self._lines)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise AssertionError(f"in-process server did not start; log:\n{self.log()}")
        if self._failed is not None:
            raise self._failed
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported to start() (or lost after a clean start: logged there)
            self._failed = error
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.server = create_server(self.config, self._models)
        await self.server.start()
        self.address = f"{self.config.host}:{self.server.port}"
        if self.server.http_port is not None:
            scheme = "https" if self.config.tls_cert is not None else "http"
            self.http_url = f"{scheme}://{self.config.host}:{self.server.http_port}"
        self._started.set()
        await self._stop.wait()
        await self.server.shutdown()

    def log_lines(self) -> list[str]:
        return list(self._lines.lines)

    def scrape(self) -> Samples:
        """The metrics straight from the server's registry (published over HTTP or not)."""
        assert self.server is not None
        return parse_samples(generate_latest(self.server.metrics.registry).decode())

    def stop(self, timeout_s: float = 60.0) -> None:
        """Drain and shut down as on SIGTERM (the config's drain and grace), and wait for the thread."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        logging.getLogger("nst_server").removeHandler(self._lines)
        assert not self._thread.is_alive(), f"in-process server did not stop; log:\n{self.log()}"
        if self._failed is not None:
            raise self._failed


_loaded: dict[tuple[Path, str, int, int, str], LossGraphs] = {}
_loaded_lock = threading.Lock()


def load_model(
    model_dir: Path, device: Device = "cpu", threads: int = 0, tile_px: int = 0, placement: Placement = "auto"
) -> LossGraphs:
    """A model directory's graphs, loaded once per process: in-process servers share them as jobs do."""
    key = (Path(model_dir).resolve(), device, threads, tile_px, placement)
    with _loaded_lock:
        if key not in _loaded:
            _loaded[key] = LossGraphs(Path(model_dir), device, threads, tile_px=tile_px, placement=placement)
        return _loaded[key]


def config_from_flags(model_dirs: Sequence[Path], *args: str) -> ServerConfig:
    """The ServerConfig `nst-server` would build from these flags, on a free port; $NST_TOKEN is not read."""
    flags = ["--port", "0"] + [arg for model_dir in model_dirs for arg in ("--model", str(model_dir))]
    return config_from_args(build_parser().parse_args([*flags, *args]), {})


@overload
def running_server(
    model_dirs: Sequence[Path], *args: str, in_process: Literal[True] = ..., timeout_s: float = ...
) -> contextlib.AbstractContextManager[InProcessServer]: ...


@overload
def running_server(
    model_dirs: Sequence[Path],
    *args: str,
    in_process: Literal[False],
    env: Mapping[str, str] | None = ...,
    timeout_s: float = ...,
) -> contextlib.AbstractContextManager[ServerProcess]: ...


@contextlib.contextmanager  # type: ignore[misc]  # overloads above give each mode its own type; this is their body
def running_server(
    model_dirs: Sequence[Path],
    *args: str,
    in_process: bool = True,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
) -> Iterator[InProcessServer | ServerProcess]:
    """A server with `nst-server`'s flags ``args`` on a free port, stopped (and checked to exit 0) on leaving.

    In this process by default: quick, and its metrics and log are read directly. ``in_process=False`` runs the
    real command instead, for what only a process has: signals, exit codes, its own memory, ``env``.
    """
    if in_process:
        assert env is None, "an in-process server shares this process's environment; pass flags instead"
        config = config_from_flags(model_dirs, *args)
        models = [
            load_model(path, config.device, config.threads, config.tile_px, config.optimizer_placement)
            for path in config.model_dirs
        ]
        server = InProcessServer(config, models).start(timeout_s)
        try:
            yield server
        finally:
            server.stop()
        return
    process = start_server(model_dirs, *args, timeout_s=timeout_s, env=env)
    try:
        yield process
    finally:
        code = process.terminate()
    assert code == 0, f"the server exited {code}; log:\n{process.log()}"
