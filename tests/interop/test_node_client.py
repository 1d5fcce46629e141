"""A Node.js client (@grpc/grpc-js + @grpc/proto-loader, the .proto read at run time) against a real server.

`tests/interop/stylize.js` streams one Stylize call, checks every event and the image, asks DescribeModel and
checks that a bad request comes back INVALID_ARGUMENT. Here its image is also compared with the Python client's
for the same request: same server, same seed, so the two stacks must receive byte-identical PNGs.
Node and npm are prerequisites of the test suite (README); the npm packages are installed from
`package-lock.json` with `npm ci` when `node_modules` is missing or older than the lock file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from nst_client import StyleClient
from nst_server.testing import ServerProcess, start_server
from PIL import Image

from tests.images import png
from tests.node import installed_node_modules

HERE = Path(__file__).resolve().parent
SIDE, EVALUATIONS, SEED = 48, 6, 11
pytestmark = pytest.mark.slow  # npm install, node and a server process: seconds each


@pytest.fixture(name="node_modules", scope="module")
def _node_modules() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node, "node is a prerequisite of the test suite (see README): install Node.js 18 or newer"
    assert npm, "npm is a prerequisite of the test suite (see README): install it with Node.js"
    return installed_node_modules(HERE, npm)


@pytest.fixture(name="server", scope="module")
def _server(model_dir: Path) -> Iterator[ServerProcess]:
    server = start_server([model_dir], "--max-concurrent", "1")
    yield server
    assert server.terminate() == 0


def _node(*args: str) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node
    return subprocess.run([node, str(HERE / "stylize.js"), *args], capture_output=True, text=True, timeout=300)


def test_node_client_streams_stylize(node_modules: Path, server: ServerProcess, tmp_path: Path) -> None:
    """The Node client's own checks pass, and its image is the Python client's, byte for byte."""
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    content.write_bytes(png(64, 48, seed=1))
    style.write_bytes(png(40, 40, seed=2))
    out = tmp_path / "node.png"
    done = _node(server.address, str(content), str(style), str(out), str(SIDE), str(EVALUATIONS), str(SEED))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["width"], summary["height"]) == (48, 36)
    assert 0 < summary["evaluations"] <= EVALUATIONS
    assert summary["refused"].startswith("INVALID_ARGUMENT: ")
    with Image.open(out) as image:
        assert image.size == (48, 36)
    with (
        StyleClient(server.address) as client,
        client.stylize(content, [style], max_side_px=SIDE, max_evaluations=EVALUATIONS, seed=SEED) as call,
    ):
        python_result = call.result()
    assert python_result.format == "png"
    assert out.read_bytes() == python_result.image


def test_node_client_fails_on_a_server_that_is_not_there(node_modules: Path, tmp_path: Path) -> None:
    """The client's checks can fail: no server, exit 1 with the reason (so a pass above means something)."""
    content = tmp_path / "content.png"
    content.write_bytes(png(32, 32))
    done = _node("127.0.0.1:1", str(content), str(content), str(tmp_path / "out.png"))
    assert done.returncode == 1
    assert "FAIL: DescribeModel failed" in done.stderr
    assert not (tmp_path / "out.png").exists()
