#!/usr/bin/env bash
# The whole test suite from a fresh machine: a virtualenv, the package installed as a user gets it (not
# editable, every extra the tests need), lint, the API contract, then pytest. Run from anywhere:
#   bash tests/run.sh [extra pytest arguments]
# NST_VENV picks the virtualenv (default .venv in the repository; created when missing).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
venv="${NST_VENV:-$repo_root/.venv}"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "== creating $venv"
    python3.11 -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
echo "== installing neuralstyletransfer[server,export,dev] into $venv"
python -m pip install --quiet --upgrade pip
# Not editable: the tests exercise the installed distribution (tests/test_packaging.py checks its contents).
# torch is pinned to 2.13.0 in the export extra: the CPU wheel this workplace keeps on local disk.
python -m pip install --quiet --force-reinstall --no-deps .
python -m pip install --quiet ".[server,export,dev]"

echo "== ruff"
ruff check .
ruff format --check .

echo "== mypy --strict (server/, client/, export/, protos/nst/: events.py and the stubs; settings in pyproject.toml)"
mypy

echo "== API contract (buf)"
bash .ci/check_protos.sh

echo "== pytest"
status=0
python -m pytest "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "ERROR: pytest collected no tests; that is a failure, not a pass" >&2
fi
exit "$status"
