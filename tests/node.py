"""npm packages for the tests that run Node.js: installed from a folder's lock file, once, and kept between runs."""

from __future__ import annotations

import subprocess
from pathlib import Path


def installed_node_modules(folder: Path, npm: str) -> Path:
    """``folder``/node_modules as ``npm ci`` installs it from ``folder``/package-lock.json, again only when the lock
    file is newer than the last install (npm writes node_modules/.package-lock.json on every install)."""
    marker = folder / "node_modules" / ".package-lock.json"
    if not marker.exists() or marker.stat().st_mtime < (folder / "package-lock.json").stat().st_mtime:
        done = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return folder / "node_modules"
