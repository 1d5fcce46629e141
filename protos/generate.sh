#!/usr/bin/env bash
# Regenerate everything made from protos/nst/v1/style_transfer.proto, and the page's script built on it:
#   protos/nst/v1/style_transfer_pb2.py, .pyi, _pb2_grpc.py  protobuf and gRPC (grpcio-tools)
#   protos/nst/v1/style_transfer_connect.py                  Connect and gRPC-Web (protoc-gen-connectrpc)
#   web/src/gen/nst/v1/style_transfer_pb.ts                  the messages for the browser (protoc-gen-es)
#   server/nst_server/transport/page/nst.js                  web/src/main.ts bundled by esbuild
# Needs the `dev` extra in the active Python environment, and Node.js with npm: the npm tools (pinned in
# web/package-lock.json) are installed into web/node_modules by `npm ci`, the only step that uses the network.
# Run from anywhere; tests/test_generated.py runs it on a copy and compares.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
proto=protos/nst/v1/style_transfer.proto

python -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos --grpc_python_out=protos "$proto"

connect_plugin="$(command -v protoc-gen-connectrpc)" || {
    echo "protoc-gen-connectrpc not found: install the dev extra (pip install '.[dev]')" >&2
    exit 1
}
python -m grpc_tools.protoc -Iprotos --plugin=protoc-gen-connectrpc="$connect_plugin" \
    --connectrpc_out=protos --connectrpc_opt=protobuf=google "$proto"

if [[ ! -x web/node_modules/.bin/protoc-gen-es || web/package-lock.json -nt web/node_modules/.package-lock.json ]]; then
    (cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
python -m grpc_tools.protoc -Iprotos --plugin=protoc-gen-es=web/node_modules/.bin/protoc-gen-es \
    --es_out=web/src/gen --es_opt=target=ts "$proto"
(cd web && node_modules/.bin/tsc -p . && node_modules/.bin/esbuild src/main.ts --bundle --format=esm \
    --target=es2022 --minify --legal-comments=none --log-level=warning --outfile=../server/nst_server/transport/page/nst.js)

echo "generated: protos/nst/v1/style_transfer_pb2.py, .pyi, _pb2_grpc.py, _connect.py;" \
    "web/src/gen/nst/v1/style_transfer_pb.ts; server/nst_server/transport/page/nst.js"
