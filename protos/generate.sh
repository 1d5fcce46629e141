#!/usr/bin/env bash
# Regenerate the committed Python stubs of the API from protos/nst/v1/style_transfer.proto.
# Needs grpcio-tools (the `dev` extra) in the active Python environment. Run from anywhere.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

python -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos --grpc_python_out=protos \
    protos/nst/v1/style_transfer.proto

echo "generated: protos/nst/v1/style_transfer_pb2.py, style_transfer_pb2.pyi, style_transfer_pb2_grpc.py"
