"""TLS and bearer-token authentication of a real server, through the library and the CLI.

A call without the right token is refused UNAUTHENTICATED before the servicer sees it (no job line in the log:
nothing decoded, nothing computed); the health service stays open for probes; the token is never logged.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from nst_client import StyleClient, StyleTransferError
from nst_server.__main__ import build_parser
from nst_server.__main__ import main as server_main
from nst_server.testing import ServerProcess, server_env, start_server

from tests.client.support import nst, self_signed
from tests.images import png
from tests.reliability.support import report

pytestmark = pytest.mark.reliability

FILE_TOKEN = "file-token-3f9c2a"
ENV_TOKEN = "env-token-77b1e0"  # set too, but --token-file wins
QUICK = {"max_side_px": 64, "max_evaluations": 2, "optimizer": "adam"}
MISSING, WRONG = "missing bearer token", "wrong bearer token"


@dataclass(frozen=True)
class Secured:
    server: ServerProcess
    cert: Path
    token_file: Path
    folder: Path


@pytest.fixture(name="secured", scope="module")
def _secured(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A server with TLS and a token from --token-file, with a different $NST_TOKEN that must not count."""
    folder = tmp_path_factory.mktemp("access")
    cert, key = self_signed(folder)
    token_file = folder / "token"
    token_file.write_text(FILE_TOKEN + "\n")  # the newline is stripped
    (folder / "content.png").write_bytes(png(64, 48, seed=1))
    (folder / "style.png").write_bytes(png(64, 64, seed=2))
    access = ("--tls-cert", str(cert), "--tls-key", str(key), "--token-file", str(token_file))
    server = start_server([model_dir], *access, "--drain", "0", env={"NST_TOKEN": ENV_TOKEN})
    yield Secured(server, cert, token_file, folder)
    assert server.terminate() == 0


def _call(client: StyleClient, method: str) -> str:
    """ "OK" or the status code and message of one library call."""
    try:
        if method == "describe":
            client.describe(timeout_s=30)
        elif method == "health":
            assert client.health(timeout_s=30) == "SERVING"
        else:
            client.stylize(png(64, 48), png(64, 64), timeout_s=60, **QUICK).result()  # type: ignore[arg-type]
    except StyleTransferError as error:
        return f"{error.code.name}: {error.message}"
    return "OK"


def _reflection(client: StyleClient) -> str:
    """Server reflection over the client's own channel (its TLS and its token), which the library does not wrap."""
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    stub = reflection_pb2_grpc.ServerReflectionStub(client._channel)
    try:
        list(stub.ServerReflectionInfo(iter([request]), timeout=30))
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()}"
    return "OK"


def test_library_calls_need_the_right_token_and_refused_ones_compute_nothing(secured: Secured) -> None:
    """No token or a wrong one (the environment's too): UNAUTHENTICATED and no job; health is open; right: works."""
    roots = secured.cert.read_bytes()
    jobs_before = secured.server.outcomes()
    seen: dict[str, dict[str, str]] = {}
    for name, token in (("none", None), ("wrong", "guess"), ("env", ENV_TOKEN), ("right", FILE_TOKEN)):
        with StyleClient(secured.server.address, tls=True, root_certificates=roots, token=token) as client:
            seen[name] = {method: _call(client, method) for method in ("health", "describe", "stylize")}
            seen[name]["reflection"] = _reflection(client)
    jobs = secured.server.wait_outcomes(1, since=jobs_before)
    statuses = {name: {method: got.split(":")[0] for method, got in calls.items()} for name, calls in seen.items()}
    report("access_library", {"token": statuses, "jobs_computed": jobs.total()})
    assert seen["right"] == dict.fromkeys(("health", "describe", "stylize", "reflection"), "OK")
    for name, problem in (("none", MISSING), ("wrong", WRONG), ("env", WRONG)):
        assert seen[name]["health"] == "OK"  # probes carry no token
        for method in ("describe", "stylize", "reflection"):
            assert seen[name][method].startswith(f"UNAUTHENTICATED: {problem}"), (name, method, seen[name][method])
    assert jobs == Counter(ok=1)  # the one right stylize; the refused ones never reached it


@pytest.mark.slow  # server and CLI processes, certificates made by the test
def test_plaintext_client_cannot_talk_to_the_tls_server(secured: Secured) -> None:
    """The listener speaks TLS only: a plaintext channel gets UNAVAILABLE, whatever its token."""
    with StyleClient(secured.server.address, token=FILE_TOKEN) as client, pytest.raises(StyleTransferError) as error:
        client.health(timeout_s=10)
    assert error.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.slow  # server and CLI processes, certificates made by the test
def test_cli_with_tls_and_token(secured: Secured, tmp_path: Path) -> None:
    """`nst` with --ca-cert and --token-file stylizes; without the token it is refused; `nst health` needs none."""
    connection = ("--server", secured.server.address, "--ca-cert", secured.cert)
    inputs = (secured.folder / "content.png", secured.folder / "style.png")
    quick = ("--size", "64", "--optimizer", "adam", "--iterations", "2")
    jobs_before = secured.server.outcomes()
    out = tmp_path / "styled.png"
    done = nst("stylize", *inputs, "-o", out, *connection, "--token-file", secured.token_file, *quick)
    wrong = nst("stylize", *inputs, "-o", tmp_path / "no.png", *connection, *quick, env={"NST_TOKEN": "guess"})
    anonymous = nst("info", *connection)
    health = nst("health", *connection)
    by_env = nst("info", *connection, env={"NST_TOKEN": FILE_TOKEN})
    jobs = secured.server.wait_outcomes(1, since=jobs_before)
    report("access_cli", {"stylize_right_token": done.returncode, "stylize_wrong_token": wrong.returncode,
                          "info_no_token": anonymous.returncode, "health_no_token": health.returncode,
                          "info_token_from_env": by_env.returncode, "jobs_computed": jobs.total()})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.is_file()
    assert (wrong.returncode, WRONG in wrong.stderr, "UNAUTHENTICATED" in wrong.stderr) == (1, True, True), wrong.stderr
    assert not (tmp_path / "no.png").exists()
    assert (anonymous.returncode, MISSING in anonymous.stderr) == (1, True), anonymous.stderr
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING"), health.stderr
    assert by_env.returncode == 0, by_env.stderr
    assert jobs == Counter(ok=1)


def test_start_up_log_says_tls_and_auth_are_on_and_never_shows_a_token(secured: Secured) -> None:
    """One line says what is on; neither token appears anywhere in the log."""
    line = secured.server.wait_logged(r"access: ")
    assert "TLS (certificate" in line
    assert "bearer token required on every call but grpc.health.v1.Health" in line
    assert FILE_TOKEN not in secured.server.log()
    assert ENV_TOKEN not in secured.server.log()
    assert secured.server.address.startswith("127.0.0.1:")  # loopback unless told otherwise


@pytest.mark.slow  # server and CLI processes, certificates made by the test
def test_token_from_the_environment_over_plaintext(model_dir: Path) -> None:
    """$NST_TOKEN alone (whitespace stripped) turns auth on without TLS; the token travels as call metadata."""
    server = start_server([model_dir], "--drain", "0", env={"NST_TOKEN": f"  {ENV_TOKEN}\n"})
    try:
        assert "plaintext (no TLS), bearer token required" in server.wait_logged(r"access: ")
        with StyleClient(server.address, token=ENV_TOKEN) as client:
            assert _call(client, "describe") == "OK"
        with StyleClient(server.address) as client:
            assert _call(client, "describe").startswith(f"UNAUTHENTICATED: {MISSING}")
            assert _call(client, "health") == "OK"
    finally:
        assert server.terminate() == 0


@pytest.mark.slow  # server and CLI processes, certificates made by the test
def test_no_token_no_tls_by_default(model_dir: Path) -> None:
    """Without flags or $NST_TOKEN: plaintext, no authentication, on 127.0.0.1."""
    assert build_parser().parse_args(["--model", str(model_dir)]).host == "127.0.0.1"
    server = start_server([model_dir], "--drain", "0")
    try:
        assert "plaintext (no TLS), no authentication" in server.wait_logged(r"access: ")
        with StyleClient(server.address) as client:
            assert _call(client, "describe") == "OK"
    finally:
        assert server.terminate() == 0


USAGE_ERRORS = {
    "cert-without-key": (["--tls-cert", "cert.pem"], {}, 2, "--tls-cert and --tls-key go together"),
    "key-without-cert": (["--tls-key", "key.pem"], {}, 2, "--tls-cert and --tls-key go together"),
    "empty-token-file": (["--token-file", "empty"], {}, 2, "--token-file empty: the token is empty"),
    "blank-token-env": ([], {"NST_TOKEN": " \n"}, 2, "$NST_TOKEN: the token is empty"),
    "unprintable-token": ([], {"NST_TOKEN": "to\x01ken"}, 2, "$NST_TOKEN: the token must be printable ASCII"),
    "missing-token-file": (["--token-file", "absent"], {}, 1, "cannot read --token-file absent: No such file"),
}


@pytest.mark.parametrize("case", USAGE_ERRORS, ids=list(USAGE_ERRORS))
def test_access_settings_that_cannot_work_stop_the_server_at_once(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Half a TLS pair, an empty or unprintable token, an unreadable token file: one line and exit 2 (or 1)."""
    args, env, status, message = USAGE_ERRORS[case]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").write_text("\n")
    monkeypatch.delenv("NST_TOKEN", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # No model exists: the check must come first, or loading would fail with another message.
    assert server_main(["--model", str(tmp_path / "no-model"), *args]) == status
    err = capsys.readouterr().err
    assert err.startswith(f"nst-server: error: {message}"), err
    assert len(err.splitlines()) == 1, err


@pytest.mark.slow  # server and CLI processes, certificates made by the test
def test_certificate_and_key_that_do_not_match_exit_1(model_dir: Path, tmp_path: Path) -> None:
    """A key from another pair: a clear error and exit 1 instead of gRPC's bare "Failed to bind"."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    command = [sys.executable, "-m", "nst_server", "--model", str(model_dir), "--port", "0",
               "--tls-cert", str(cert), "--tls-key", str(other_key)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=server_env())
    assert done.returncode == 1, done.stderr
    assert "not a PEM certificate chain and its private key" in done.stderr
