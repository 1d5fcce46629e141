#!/usr/bin/env bash
# Every benchmark from a fresh machine: a virtualenv with the server, export and bench extras, then
# `python -m bench` (flags pass through: --large adds 1024 px). Writes bench/results/*.json, the plot and
# BENCHMARKS.md's tables. Takes about 15 minutes on 2 cores; run it on an otherwise idle machine.
# NST_VENV picks the virtualenv (default .venv in the repository).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
venv="${NST_VENV:-$repo_root/.venv}"
[[ -x "$venv/bin/python" ]] || python3.11 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
echo "== installing neuralstyletransfer[server,export,bench] into $venv"
python -m pip install --quiet ".[server,export,bench]"
python -m bench "$@"
