"""Scale-out across real replicas: deploy/compose.yaml's 3 replicas of the cpu image and a client container.

Run by tests/deploy/docker.sh (it needs a Docker engine, docker-compose and a built image):

    python tests/deploy/scaleout.py --image IMAGE [--project NAME]

1. `docker-compose up`: 3 replicas of ``nst``, each healthy by the image's own HEALTHCHECK.
2. The client container (tests/deploy/scaleout_client.py, on ``dns:///nst:50051``) makes short calls one after
   another; every replica's ``nst_jobs_finished_total`` (read from its /metrics) must have grown: the calls
   spread over all 3.
3. It starts 3 long calls at once (replicas run 2 jobs each here); when every replica reports a running job, one
   replica is stopped (`docker stop`, drain 1 s, grace 2 s) and, once it has begun its drain, the client makes
   6 short calls one after another. The stopped replica's running job must end UNAVAILABLE with the shutdown
   message. Every short call must succeed: a draining replica refuses new jobs UNAVAILABLE before they start,
   the client's retry policy sends them to another, and the name stops resolving to the stopped one. The two
   other replicas' ``nst_jobs_finished_total{outcome="ok"}`` must have grown by exactly those 6, and the stop must
   end with exit 0 inside its timeout. Every call has a deadline (no hang); the long calls left are cancelled.

Stdlib only (the host side may have just the client library); everything it starts is removed by
``docker-compose down`` at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "deploy" / "compose.yaml"
REPLICAS = 3
_SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$")


def log(message: str) -> None:
    print(f"scaleout: {message}", flush=True)


class Compose:
    def __init__(self, project: str, image: str) -> None:
        self.base = ["docker-compose", "--project-name", project, "--file", str(COMPOSE_FILE)]
        self.env = os.environ | {"NST_IMAGE": image, "NST_DRAIN": "1", "NST_GRACE": "2", "NST_MAX_CONCURRENT": "2"}

    def run(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [*self.base, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.base, *args], env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=120).stdout.strip()


def metrics(ip: str) -> dict[tuple[str, str], float]:
    """(name, labels as written) -> value from a replica's /metrics."""
    with urllib.request.urlopen(f"http://{ip}:8000/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if (match := _SAMPLE.match(line)) and not line.startswith("#"):
            found[(match[1], match[2] or "")] = float(match[3])
    return found


def finished(ip: str, outcome: str | None = None) -> float:
    """nst_jobs_finished_total of a replica, all outcomes or one."""
    return sum(
        value
        for (name, labels), value in metrics(ip).items()
        if name == "nst_jobs_finished_total" and (outcome is None or f'outcome="{outcome}"' in labels)
    )


def wait_healthy(ids: list[str], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = [docker("inspect", "--format", "{{.State.Health.Status}}", i) for i in ids]
        if all(state == "healthy" for state in states):
            return
        time.sleep(1)
    raise AssertionError(f"replicas not healthy after {timeout_s:.0f}s: {states}")


def read_line(stream: IO[str], timeout_s: float = 300) -> dict[str, object]:
    """The client's next JSON line (its other output, e.g. compose's, is skipped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            raise AssertionError("the client container ended early")
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError("no answer from the client container")


def scale_out(compose: Compose) -> None:
    started = time.monotonic()
    compose.run("up", "--detach")
    ids = compose.run("ps", "--quiet", "nst").split()
    assert len(ids) == REPLICAS, f"{len(ids)} replicas, expected {REPLICAS}"
    wait_healthy(ids)
    ips = {i: docker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", i) for i in ids}
    log(f"{REPLICAS} replicas healthy in {time.monotonic() - started:.0f}s: {', '.join(ips.values())}")

    client = compose.popen(
        "run", "--rm", "-T", "--volume", f"{REPO / 'tests' / 'deploy'}:/tests:ro", "client",
        "python", "/tests/scaleout_client.py",
    )  # fmt: skip
    assert client.stdin is not None
    assert client.stdout is not None
    try:
        spread = read_line(client.stdout)
        assert set(spread["outcomes"]) == {"OK"}, spread  # type: ignore[arg-type]
        per_replica = {ips[i]: finished(ips[i]) for i in ids}
        log(f"{len(spread['outcomes'])} calls, nst_jobs_finished_total per replica: {per_replica}")  # type: ignore[arg-type]
        assert all(count >= 1 for count in per_replica.values()), f"a replica served nothing: {per_replica}"

        ok_base = {i: finished(ips[i], "ok") for i in ids}

        client.stdin.write("long\n")
        client.stdin.flush()
        assert read_line(client.stdout)["phase"] == "long"
        deadline = time.monotonic() + 120
        while True:
            running = {ips[i]: metrics(ips[i]).get(("nst_jobs_running", ""), 0.0) for i in ids}
            if all(value >= 1 for value in running.values()):
                break
            assert time.monotonic() < deadline, f"not every replica got a running job: {running}"
            time.sleep(0.2)
        victim, survivors = ids[0], ids[1:]
        log(f"every replica runs a job ({running}); stopping {victim[:12]} ({ips[victim]})")
        stop_started = time.monotonic()
        stop = subprocess.Popen(["docker", "stop", "--time", "30", victim], stdout=subprocess.DEVNULL)
        # The short calls begin once the replica has begun its drain (it refuses new jobs from that log line on),
        # so none of them can start there: each must be refused and retried elsewhere, or go elsewhere at once.
        while (
            "shutting down"
            not in subprocess.run(["docker", "logs", victim], capture_output=True, text=True, check=False).stderr
        ):
            assert time.monotonic() - stop_started < 30, "the replica never began its drain"
            time.sleep(0.1)
        client.stdin.write("after\n")
        client.stdin.flush()
        assert stop.wait(timeout=60) == 0, "docker stop failed"
        stop_s = time.monotonic() - stop_started
        exit_code = docker("inspect", "--format", "{{.State.ExitCode}}", victim)
        log(f"docker stop took {stop_s:.1f}s (stop timeout 30 s), exit code {exit_code}")
        assert exit_code == "0", f"the stopped replica exited {exit_code}"
        assert stop_s < 30, "docker stop needed its whole timeout: SIGTERM was not handled"

        done = read_line(client.stdout)
        assert done["phase"] == "done", done
        long_calls: list[str] = done["long"]  # type: ignore[assignment]
        after: list[str] = done["after"]  # type: ignore[assignment]
        log(f"long calls: {long_calls}")
        log(f"calls made as the stop began: {after}")
        assert client.wait(timeout=60) == 0, "the client container failed"
    finally:
        if client.poll() is None:
            client.kill()
    stopped = [outcome for outcome in long_calls if outcome.startswith("UNAVAILABLE")]
    assert len(stopped) == 1, f"one long call (the stopped replica's) must end UNAVAILABLE: {long_calls}"
    assert stopped[0].startswith("UNAVAILABLE: server shut down; the job was cancelled"), stopped[0]
    others = [outcome for outcome in long_calls if outcome not in stopped]
    assert all(outcome.startswith("CANCELLED") for outcome in others), f"the others ended otherwise: {others}"
    assert after == ["OK"] * len(after), f"calls made as the stop began did not all succeed elsewhere: {after}"
    # A job is counted just after its caller hears the result, so the last one may lag the client by a moment.
    deadline = time.monotonic() + 15
    while (ok_grown := sum(finished(ips[i], "ok") - ok_base[i] for i in survivors)) < len(after):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    log(f"the 2 other replicas finished {ok_grown:.0f} more jobs ok; the client saw {len(after)} succeed")
    assert ok_grown == len(after), f"{ok_grown} ok jobs on the other replicas, {len(after)} successful calls"
    log(f"passed in {time.monotonic() - started:.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="the cpu image (name or id)")
    parser.add_argument("--project", default=f"nst-scaleout-{os.getpid()}", help="docker-compose project name")
    args = parser.parse_args()
    compose = Compose(args.project, args.image)
    try:
        scale_out(compose)
    finally:
        compose.run("down", "--volumes", "--remove-orphans", "--timeout", "5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
