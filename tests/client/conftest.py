"""Fixtures of the client tests: the real server, input files, and a tiny recording gRPC server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nst_server.testing import InProcessServer, running_server

from tests.client.support import Inputs, Recorder, RecordingServer, serve_recorder
from tests.images import png


@pytest.fixture(name="server", scope="module")
def _server(model_dir: Path) -> Iterator[InProcessServer]:
    """One slot and one queue place, so a job left running would visibly block the next (in this process)."""
    with running_server([model_dir], "--max-concurrent", "1", "--max-queue", "1", "--drain", "0") as server:
        yield server


@pytest.fixture(name="inputs", scope="session")
def _inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "content.png").write_bytes(png(80, 60, seed=1))
    (folder / "style.png").write_bytes(png(64, 64, seed=2))
    return Inputs(folder / "content.png", folder / "style.png")


@pytest.fixture(name="recording")
def _recording() -> Iterator[RecordingServer]:
    yield from serve_recorder(Recorder())
