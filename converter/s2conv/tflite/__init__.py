"""ONNX frozen segment -> TFLite flatbuffer, written directly over the `tflite` schema
bindings (no TensorFlow, no onnx2tf). `onnx_to_tflite(model)` is the entry point;
`supported_ops()` lists the ONNX ops it has handlers for."""

from s2conv.tflite.emit import onnx_to_tflite
from s2conv.tflite.ops import supported_ops

__all__ = ["onnx_to_tflite", "supported_ops"]
