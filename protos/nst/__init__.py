"""Python bindings of the NeuralStyleTransfer gRPC API (generated from the .proto files shipped here)."""
