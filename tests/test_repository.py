"""The repository holds sources, not artefacts: no wheels, models or caches, and a tree small enough to clone fast."""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_TRACKED_BYTES = 10 * 2**20
# Build outputs and binaries that belong in a registry or a cache, never in git.
ARTEFACT_SUFFIXES = (".whl", ".onnx", ".pth", ".pt", ".tar.gz", ".zip", ".so", ".pyc")


def _tracked() -> list[PurePosixPath]:
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout (an sdist): nothing is tracked")
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, check=True, capture_output=True, text=True
    ).stdout
    return [PurePosixPath(name) for name in listing.split("\0") if name]


def test_no_artefact_is_tracked() -> None:
    artefacts = [str(path) for path in _tracked() if str(path).endswith(ARTEFACT_SUFFIXES)]
    assert artefacts == []


def test_the_tracked_tree_is_under_10_mib() -> None:
    sizes = {path: (REPO_ROOT / path).stat().st_size for path in _tracked() if (REPO_ROOT / path).is_file()}
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:5]
    assert sum(sizes.values()) < MAX_TRACKED_BYTES, f"{sum(sizes.values())} bytes; largest: {largest}"
