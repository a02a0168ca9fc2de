"""PyTorch -> ONNX (fp32 and fp16) -> TensorRT engines, with parity checks against PyTorch."""
