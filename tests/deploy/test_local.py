"""The README's main command, `bash deploy/local.sh`, on a machine with nothing beside the repository and no internet:
it writes a styled image, and says loudly that it fell back to ranVGG weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.deploy.dockerfile import REPO

pytestmark = pytest.mark.slow


def _online() -> bool:
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
    except OSError:
        return False
    return True


@pytest.mark.skipif(_online(), reason="online: local.sh would download the ImageNet weights instead of falling back")
def test_local_sh_falls_back_to_ranvgg_offline(tmp_path: Path) -> None:
    if (REPO / "models" / "vgg19-imagenet").exists():
        pytest.skip("models/vgg19-imagenet exists here: local.sh would use it and never fall back")
    out = tmp_path / "styled.png"
    env = os.environ | {"NST_VENV": sys.prefix, "TORCH_HOME": str(tmp_path / "torch")}
    done = subprocess.run(
        ["bash", str(REPO / "deploy" / "local.sh"), "--out", str(out), "--", "--size", "64", "--max-evaluations", "5"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "WARNING: the ImageNet VGG19 weights cannot be downloaded here" in done.stdout
    assert "Continuing with --weights ranvgg" in done.stdout
    assert f"== wrote {out} (weights: ranvgg)" in done.stdout
    with Image.open(out) as image:
        assert max(image.size) == 64
