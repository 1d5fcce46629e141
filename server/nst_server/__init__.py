"""The NeuralStyleTransfer gRPC server: transport/ (protocol in), domain/ (one job), runtime/ (the ONNX graphs).

The modules at the top assemble the layers: ``config``, ``app`` (the server), ``__main__`` (the CLI), ``testing``.
"""
