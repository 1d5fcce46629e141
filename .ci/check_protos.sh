#!/usr/bin/env bash
# Check the API contract with buf: `buf lint` (STANDARD rules, see buf.yaml) and `buf breaking` (FILE rules)
# against the first commit that published nst.v1 and against the parent commit, so that v1 never breaks
# for existing callers. (That the committed stubs match the .proto is checked by tests/test_packaging.py.)
#
# buf comes from npm, installed project-locally under .ci/node/ (git-ignored) when missing.
set -euo pipefail

BUF_VERSION="1.75.0"
PROTO="protos/nst/v1/style_transfer.proto"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

node_prefix=".ci/node"
buf="$node_prefix/node_modules/.bin/buf"
if [[ ! -x "$buf" ]] || [[ "$("$buf" --version 2>/dev/null)" != "$BUF_VERSION" ]]; then
    echo "installing buf $BUF_VERSION into $node_prefix (npm)"
    npm install --silent --prefix "$node_prefix" --no-audit --no-fund "@bufbuild/buf@$BUF_VERSION"
fi

echo "buf $("$buf" --version): lint"
"$buf" lint

first_release="$(git log --diff-filter=A --format=%H -- "$PROTO" | tail -n 1)"
parent="$(git rev-parse --verify --quiet HEAD~1 || true)"
for ref in $first_release $parent; do
    if git cat-file -e "$ref:$PROTO" 2>/dev/null && git cat-file -e "$ref:buf.yaml" 2>/dev/null; then
        echo "buf breaking against $(git log -1 --format='%h %s' "$ref" | cut -c1-72)"
        "$buf" breaking --against ".git#ref=$ref"
    fi
done
echo "OK: the API lints clean and breaks no published v1 caller"
