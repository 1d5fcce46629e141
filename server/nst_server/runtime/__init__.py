"""The exported graphs in onnxruntime: sessions, the ``LossModel`` implementation, tiles, and optimiser steps.

The rule of this folder: everything that imports onnxruntime or onnx lives here, and nothing here imports grpc,
protobuf (``nst.v1``) or ``transport``. It may import ``domain``, ``config``, ``nst.events`` and ``nst.manifest``.
"""
