"""Everything made from the .proto is committed as protos/generate.sh makes it: run it on a copy and compare.

The Python stubs (protobuf, gRPC, Connect), the page's TypeScript messages and its bundled script. The npm tools
come from web/package-lock.json (`npm ci`, the only step that may use the network). Without Node.js the test
skips, saying so: the Python stubs alone are checked by the API contract (buf) and every test that imports them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.node import installed_node_modules

ROOT = Path(__file__).resolve().parents[1]
GENERATED = (
    "protos/nst/v1/style_transfer_pb2.py",
    "protos/nst/v1/style_transfer_pb2.pyi",
    "protos/nst/v1/style_transfer_pb2_grpc.py",
    "protos/nst/v1/style_transfer_connect.py",
    "web/src/gen/nst/v1/style_transfer_pb.ts",
    "server/nst_server/transport/page/nst.js",
)
pytestmark = pytest.mark.slow  # npm ci the first time, protoc three times, tsc and esbuild: seconds


def _node_modules(npm: str) -> Path:
    """web/node_modules installed from the lock file (kept between runs, like tests/interop's)."""
    return installed_node_modules(ROOT / "web", npm)


def test_generated_files_are_up_to_date(tmp_path: Path) -> None:
    """protos/generate.sh on a copy of the sources writes exactly the committed files."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js and npm are needed to generate the page's messages and bundle its script")
    modules = _node_modules(npm)
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", copy / "protos", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "web", copy / "web", ignore=shutil.ignore_patterns("node_modules"))
    (copy / "web" / "node_modules").symlink_to(modules, target_is_directory=True)
    (copy / "server/nst_server/transport/page").mkdir(parents=True)
    for path in GENERATED:
        (copy / path).unlink(missing_ok=True)  # each must be written afresh
    # The dev extra's tools (grpc_tools, protoc-gen-connectrpc) live beside this interpreter.
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", str(copy / "protos/generate.sh")], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, f"generate.sh failed:\n{done.stdout}\n{done.stderr}"
    stale = [path for path in GENERATED if (copy / path).read_bytes() != (ROOT / path).read_bytes()]
    assert not stale, f"out of date (run bash protos/generate.sh and commit): {', '.join(stale)}"
