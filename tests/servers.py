"""A real `nst-server` process on a free loopback port, as the tests start it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

_LISTENING = re.compile(r"listening on ([\d.]+):(\d+)")
_METRICS = re.compile(r"metrics on ([\d.]+:\d+)")
JOB_LINE = re.compile(r"nst_server\.servicer: job id=(\w+) outcome=(\w+)")
# Metric samples by name and labels, e.g. ("nst_jobs_running", frozenset()) -> 0.0.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class ServerProcess:
    """A running server, its address and everything it has logged so far."""

    process: subprocess.Popen[str]
    address: str = ""
    lines: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if match := _LISTENING.search(line):
                self.address = f"{match.group(1)}:{match.group(2)}"
                self._ready.set()
        self._ready.set()

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_logged(self, pattern: str, timeout_s: float = 30.0) -> str:
        """The first log line matching ``pattern``, waiting for it up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"server never logged {pattern!r}; log:\n{self.log()}")

    def jobs(self) -> list[tuple[str, str]]:
        """(job id, outcome) of every job line logged so far: one per Stylize call the servicer saw."""
        return [(match[1], match[2]) for line in list(self.lines) if (match := JOB_LINE.search(line))]

    def wait_jobs(self, count: int, timeout_s: float = 30.0) -> list[tuple[str, str]]:
        """``jobs()`` once there are at least ``count``: a call's line is logged just after its caller hears."""
        deadline = time.monotonic() + timeout_s
        while len(jobs := self.jobs()) < count:
            assert time.monotonic() < deadline, f"{len(jobs)} job lines, expected {count}; log:\n{self.log()}"
            time.sleep(0.05)
        return jobs

    def memory_mib(self, field: str = "VmRSS") -> float:
        """A memory field of the process's /proc/PID/status in MiB: VmRSS (resident now) or VmHWM (its peak)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no {field} for pid {self.process.pid}")

    def scrape(self) -> Samples:
        """The server's Prometheus metrics now (it must have been started with --metrics-port)."""
        match = _METRICS.search(self.wait_logged(r"metrics on"))
        assert match, self.log()
        with urllib.request.urlopen(f"http://{match[1]}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def health(self, service: str = "") -> int:
        with grpc.insecure_channel(self.address) as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then the exit status (killing it if it hangs, which fails the caller's assertion)."""
        if self.process.poll() is None:
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
    model_dirs: list[Path], *args: str, timeout_s: float = 60.0, env: Mapping[str, str] | None = None
) -> ServerProcess:
    """Start `python -m nst_server` on port 0 and wait until it says where it listens; ``env`` adds variables."""
    command = [sys.executable, "-m", "nst_server", "--port", "0"]
    for model_dir in model_dirs:
        command += ["--model", str(model_dir)]
    process = subprocess.Popen(
        [*command, *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=server_env(env)
    )
    server = ServerProcess(process)
    threading.Thread(target=server._drain, daemon=True).start()
    if not server._ready.wait(timeout_s) or not server.address:
        server.terminate(5)
        raise AssertionError(f"server did not start; log:\n{server.log()}")
    return server
