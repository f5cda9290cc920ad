"""Engines: a uint8 batch in, ``{layer: float32 N x D}`` out (torch, or ONNX Runtime with its export and int8
quantization), with the CPU at hand and the out-of-memory guard."""
