"""The Dockerfile without a Docker engine: hadolint on it, and the image's own commands run against a real server."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from nst_server.__main__ import build_parser
from nst_server.testing import ServerProcess

from tests.deploy.dockerfile import DOCKERFILE, REPO, stages

BIN = Path(sys.executable).parent  # the console scripts of the installed package, as on the image's PATH
IMAGE_MODEL_DIR = "/models/vgg19"


def _hadolint(*flags: str) -> subprocess.CompletedProcess[str]:
    command = [str(BIN / "hadolint"), "--config", str(REPO / ".hadolint.yaml"), "--no-color", *flags, str(DOCKERFILE)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_hadolint_passes() -> None:
    """hadolint finds nothing in the Dockerfile, style findings included."""
    rv = _hadolint()
    assert (rv.returncode, rv.stdout, rv.stderr) == (0, "", "")


def test_the_one_ignored_rule_is_the_documented_one() -> None:
    """Without inline pragmas hadolint finds only DL3013, on the RUN that installs this source tree."""
    rv = _hadolint("--disable-ignore-pragma", "--format", "json")
    findings = json.loads(rv.stdout)
    assert [finding["code"] for finding in findings] == ["DL3013"]
    lines = DOCKERFILE.read_text().splitlines()[findings[0]["line"] - 1 :]
    assert lines[0].startswith("RUN "), lines[0]
    step = "\n".join(lines[: next(i for i, line in enumerate(lines) if not line.endswith("\\")) + 1])
    assert 'pip install ".[export]"' in step, step


def test_build_context_keeps_what_the_build_copies() -> None:
    """.dockerignore admits nothing by default, then exactly the paths the Dockerfile COPYs from the context."""
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    admitted = {pattern.removeprefix("!") for pattern in patterns if pattern.startswith("!")}
    copied = {source for stage in stages().values() for source in stage.copies}
    assert patterns[0] == "*"
    assert admitted == copied


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_image_command_parses(target: str) -> None:
    """Each runtime target runs nst-server as a non-root user with flags nst-server accepts, on the exposed ports
    (gRPC, then HTTP: Connect, gRPC-Web and the page)."""
    stage = stages()[target]
    assert stage.entrypoint[0] == "nst-server"
    config = build_parser().parse_args(list(stage.command[1:]))
    assert (config.host, [str(config.port), str(config.http_port)]) == ("0.0.0.0", list(stage.expose))
    assert [str(path) for path in config.model_dirs] == [IMAGE_MODEL_DIR]
    assert f"--out {IMAGE_MODEL_DIR}" in DOCKERFILE.read_text()  # where the export stage writes the model
    assert stage.user not in ("", "0", "root")
    assert stage.healthcheck[:2] == ("nst", "health")
    assert f"127.0.0.1:{config.port}" in stage.healthcheck
    # The probe's own deadline ends before Docker's, so a hung server reads as unhealthy, not as a killed probe.
    probe_timeout_s = float(_option(list(stage.healthcheck), "--timeout"))
    assert probe_timeout_s < float(stage.healthcheck_options["timeout"].removesuffix("s"))


@pytest.mark.slow
def test_image_command_serves_is_healthy_and_stops_on_sigterm(model_dir: Path) -> None:
    """The cpu image's command serves, its HEALTHCHECK exits 0, then after SIGTERM it fails and the server exits 0."""
    stage = stages()["cpu"]
    command = [str(BIN / stage.command[0]), *stage.command[1:]]
    command[command.index(IMAGE_MODEL_DIR)] = str(model_dir)
    command[command.index("--port") + 1] = "0"  # a free port; the real one is read from the log
    command[command.index("--http-port") + 1] = "0"
    # cwd "/": the runtime stage sets no WORKDIR, so the command must not lean on the checkout.
    server = ServerProcess(
        subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd="/")
    )
    threading.Thread(target=server.drain_log, daemon=True).start()  # the shared harness's log reader
    try:
        listening = re.search(r"listening on 0\.0\.0\.0:(\d+)", server.wait_logged(r"listening on", 60))
        assert listening, server.log()
        port = listening[1]
        probe = [str(BIN / stage.healthcheck[0]), *stage.healthcheck[1:]]
        probe[probe.index("127.0.0.1:50051")] = f"127.0.0.1:{port}"
        healthy = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
        assert (healthy.returncode, healthy.stdout.strip()) == (0, "SERVING"), healthy.stderr
        assert "metrics on" not in server.log()  # metrics are off unless asked for
        with urllib.request.urlopen(server.http_url + "/", timeout=30) as page:  # the page, on the HTTP port
            assert b'src="nst.js"' in page.read()

        server.process.send_signal(signal.SIGTERM)  # what `docker stop` sends to PID 1
        server.wait_logged("shutting down")
        draining = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
        assert draining.returncode != 0
    finally:
        rc = server.terminate()
    assert rc == 0, server.log()
