"""Load and vanishing clients against a real server.

Beyond its capacity every call ends (a result or RESOURCE_EXHAUSTED) and none is lost; callers that cancel, close
their channel or are killed mid-stream give their capacity back every time; memory stays flat over many jobs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from nst.v1 import style_transfer_pb2 as pb
from nst.v1 import style_transfer_pb2_grpc as pb_grpc
from nst_server.testing import ServerProcess, start_server

from tests.client.support import cli_env
from tests.images import png
from tests.reliability.support import report, wait_idle
from tests.requests import assert_serves, status_of, stylize_request

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

CLIENTS, CALLS_EACH = 24, 3  # against --max-concurrent 1 --max-queue 2: eight times what the server holds
DEADLINE_S = 120.0  # of every call: nothing here can hang, whatever the server does
SHORT = stylize_request(max_evaluations=20, optimizer=pb.OPTIMIZER_ADAM)  # long enough for the queue to fill
LONG = stylize_request(128, 128, max_evaluations=100000, optimizer=pb.OPTIMIZER_ADAM)  # runs until stopped
VANISH_REPEATS = 3
MEMORY_JOBS, MEMORY_BASELINE_AFTER = 200, 20
MEMORY_BOUND_MIB = 64.0  # measured growth is about 1 MiB; a leak of ~300 KiB a job would cross this


def test_overload_every_call_ends_and_none_is_lost(model_dir: Path) -> None:
    """24 clients x 3 calls against 1 slot + 2 queue places: results or RESOURCE_EXHAUSTED, all accounted for."""
    server = start_server([model_dir], "--max-concurrent", "1", "--max-queue", "2", "--drain", "0")
    outcomes: list[tuple[grpc.StatusCode, str]] = []
    barrier = threading.Barrier(CLIENTS)

    def client() -> None:
        with grpc.insecure_channel(server.address) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)  # connected first, so the calls arrive together
            stub = pb_grpc.StyleTransferServiceStub(channel)
            barrier.wait(timeout=60)
            for _ in range(CALLS_EACH):
                outcomes.append(status_of(stub.Stylize(SHORT, timeout=DEADLINE_S)))

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            for future in [pool.submit(client) for _ in range(CLIENTS)]:
                future.result(timeout=CALLS_EACH * DEADLINE_S + 60)
        seconds = time.monotonic() - started
        logged = server.wait_outcomes(CLIENTS * CALLS_EACH)
    finally:
        assert server.terminate() == 0
    codes = Counter(code.name for code, _ in outcomes)
    figures = {"calls": len(outcomes), "statuses": dict(codes), "server_logged": dict(logged)}
    report("overload", figures | {"seconds": round(seconds, 1)})
    assert len(outcomes) == CLIENTS * CALLS_EACH
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes
    assert codes["OK"] >= 3  # the first three calls to arrive always find room
    assert codes["RESOURCE_EXHAUSTED"] > 0
    refusals = {details for code, details in outcomes if code == grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all("server busy" in details and "--max-queue 2" in details for details in refusals), refusals
    # None lost: the server saw every call, and ended each the way its caller heard.
    assert logged == Counter({"ok": codes["OK"], "Overloaded": codes["RESOURCE_EXHAUSTED"]})


def _first_progress(call: Iterator[pb.StylizeResponse]) -> None:
    progress = next((response for response in call if response.WhichOneof("event") == "progress"), None)
    assert progress is not None, "the stream ended before its first progress event"


def _cancel(server: ServerProcess, _: Path) -> None:
    """The caller cancels its call after the first progress event."""
    with grpc.insecure_channel(server.address) as channel:
        call = pb_grpc.StyleTransferServiceStub(channel).Stylize(LONG, timeout=DEADLINE_S)
        _first_progress(call)
        call.cancel()


def _close_channel(server: ServerProcess, _: Path) -> None:
    """The caller closes its whole channel mid-stream, without cancelling the call first."""
    channel = grpc.insecure_channel(server.address)
    _first_progress(pb_grpc.StyleTransferServiceStub(channel).Stylize(LONG, timeout=DEADLINE_S))
    channel.close()


def _kill_client(server: ServerProcess, folder: Path) -> None:
    """An `nst stylize` process is SIGKILLed mid-stream: its connection just drops, nothing is said."""
    command = [sys.executable, "-m", "nst_client.cli", "stylize", str(folder / "content.png"),
               str(folder / "style.png"), "-o", str(folder / "out.png"), "--server", server.address, "--size", "128",
               "--optimizer", "adam", "--iterations", "100000", "--progress", "json"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=cli_env())
    watchdog = threading.Timer(DEADLINE_S, process.kill)  # bounds the blocking reads below
    watchdog.start()
    try:
        assert process.stdout is not None
        progress = next((line for line in process.stdout if json.loads(line)["event"] == "progress"), None)
        assert progress is not None, "nst ended before its first progress event"
    finally:
        process.kill()
        process.wait(timeout=30)
        watchdog.cancel()


VANISH: dict[str, Callable[[ServerProcess, Path], None]] = {
    "cancel": _cancel,
    "close-channel": _close_channel,
    "sigkill-client": _kill_client,
}


def test_vanishing_clients_give_capacity_back_every_time(model_dir: Path, tmp_path: Path) -> None:
    """With one slot and no queue, after each caller leaves mid-stream the server is idle and the next job runs."""
    (tmp_path / "content.png").write_bytes(png(128, 128, seed=1))
    (tmp_path / "style.png").write_bytes(png(64, 64, seed=2))
    args = ("--max-concurrent", "1", "--max-queue", "0", "--max-evaluations", "100000", "--metrics-port", "0")
    server = start_server([model_dir], *args, "--drain", "0")
    returned: Counter[str] = Counter()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.StyleTransferServiceStub(channel)
            for mode, vanish in VANISH.items():
                for _ in range(VANISH_REPEATS):
                    # Counted by outcome, not by position: the last good job's count may still be on its way.
                    before = server.outcomes()
                    vanish(server, tmp_path)
                    server.wait_outcome("cancelled", since=before)
                    wait_idle(server)
                    assert_serves(stub)  # --max-queue 0: refused unless the slot really is free
                    returned[mode] += 1
    finally:
        assert server.terminate() == 0
    report("vanishing_clients", {"capacity_returned": dict(returned), "repeats_each": VANISH_REPEATS})
    assert returned == dict.fromkeys(VANISH, VANISH_REPEATS)


def test_memory_after_200_jobs_is_within_bound_of_after_20(model_dir: Path) -> None:
    """200 short jobs, every fourth cancelled mid-stream: resident memory grows less than the bound after job 20."""
    server = start_server([model_dir], "--max-concurrent", "1", "--max-queue", "2", "--drain", "0")
    request = stylize_request(max_evaluations=4, optimizer=pb.OPTIMIZER_ADAM)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.StyleTransferServiceStub(channel)
            for job in range(1, MEMORY_JOBS + 1):
                call = stub.Stylize(request, timeout=DEADLINE_S)
                if job % 4 == 0:
                    _first_progress(call)
                    call.cancel()
                else:
                    assert status_of(call) == (grpc.StatusCode.OK, "")
                if job == MEMORY_BASELINE_AFTER:
                    baseline = server.memory_mib()
            final = server.memory_mib()
        outcomes = server.wait_outcomes(MEMORY_JOBS)
    finally:
        assert server.terminate() == 0
    growth = final - baseline
    rss = {"rss_mib_after_20": round(baseline, 1), "rss_mib_after_200": round(final, 1), "growth_mib": round(growth, 1)}
    report("memory", rss | {"bound_mib": MEMORY_BOUND_MIB, "outcomes": dict(outcomes)})
    assert growth < MEMORY_BOUND_MIB
    assert set(outcomes) <= {"ok", "cancelled"}
    assert sum(outcomes.values()) == MEMORY_JOBS
