"""ONNX export of fake-quantized graphs as QDQ models (QuantizeLinear / DequantizeLinear pairs,
opset 21), for deployment toolchains outside TVM: ONNX Runtime, TensorRT, OpenVINO, NPU SDKs.
Not a hardware family: nothing here registers a backend. See :mod:`lcpaq.backends.onnx.export`."""
