"""The protocol in: gRPC servicing, protobuf codec, admission, authentication and metrics.

The rule of this folder: it may import grpc, protobuf (``nst.v1``), ``domain`` and ``config``, never onnxruntime,
onnx or ``runtime``: it sees the model only through ``domain.model.LossModel``.
"""
