"""The NeuralStyleTransfer gRPC server: ONNX Runtime for loss and gradient, a host-side optimiser."""
