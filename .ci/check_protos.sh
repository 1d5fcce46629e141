#!/usr/bin/env bash
# Check the API contract: `buf lint` (STANDARD rules, see buf.yaml) passes, and the committed Python stubs
# under protos/nst/v1/ are exactly what protos/generate.sh produces from the .proto files today.
#
# Assumes the project's virtualenv is active (grpcio-tools from the `dev` extra). buf comes from npm,
# installed project-locally under .ci/node/ (git-ignored); this script installs it there if missing.
set -euo pipefail

BUF_VERSION="1.75.0"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

node_prefix=".ci/node"
buf="$node_prefix/node_modules/.bin/buf"
if [[ ! -x "$buf" ]] || [[ "$("$buf" --version 2>/dev/null)" != "$BUF_VERSION" ]]; then
    echo "installing buf $BUF_VERSION into $node_prefix (npm)"
    npm install --prefix "$node_prefix" --no-audit --no-fund "@bufbuild/buf@$BUF_VERSION"
fi

echo "buf $("$buf" --version): lint"
"$buf" lint

echo "stubs: regenerating into a temporary directory"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Same invocation as protos/generate.sh, with the output redirected.
mapfile -t protos < <(cd protos && find nst -name '*.proto' | sort)
python -m grpc_tools.protoc -Iprotos --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
    "${protos[@]/#/protos/}"

# Compare only generated files: the committed tree also holds the .proto sources and __init__.py files.
committed="$tmp/.committed"
mkdir -p "$committed"
(cd protos && find nst \( -name '*_pb2.py' -o -name '*_pb2.pyi' -o -name '*_pb2_grpc.py' \) -print0 \
    | xargs -0 -r cp --parents -t "$committed")
generated="$tmp/.generated"
mkdir -p "$generated"
(cd "$tmp" && find nst -type f -print0 | xargs -0 -r cp --parents -t "$generated")

if ! diff -r "$committed" "$generated"; then
    echo >&2
    echo "ERROR: the committed stubs under protos/ differ from freshly generated ones (diff above: committed," >&2
    echo "       then generated). Run protos/generate.sh (this venv has grpcio-tools $(python -c \
        'import importlib.metadata as m; print(m.version("grpcio-tools"))')) and commit the result." >&2
    exit 1
fi
echo "OK: buf lint passes and the committed stubs match the .proto files"
