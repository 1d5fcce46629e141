"""Version 1 of the NeuralStyleTransfer API: style_transfer.proto and its generated protobuf and gRPC stubs."""
