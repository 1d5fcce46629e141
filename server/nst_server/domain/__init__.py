"""One stylisation job, from validated inputs to the encoded result: the Gatys et al. method itself.

The rule of this folder: it imports neither grpc, protobuf (``nst.v1``) nor onnxruntime (nor onnx). It may import
``nst.events``, ``nst.manifest`` and ``nst_server.config``; ``transport`` calls it and ``runtime`` implements
its ``model.LossModel``. tests/server/test_import_boundary.py holds every folder to its rule.
"""
