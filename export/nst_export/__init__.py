"""Build-time tooling: VGG19 (PyTorch) to ONNX graphs that compute Gatys targets, loss and gradient."""
