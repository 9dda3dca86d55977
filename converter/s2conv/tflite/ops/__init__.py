"""The op handlers; importing this package fills `HANDLERS`."""

from s2conv.tflite.ops import activation, arithmetic, conv, dense, pool, tensor
from s2conv.tflite.ops.registry import HANDLERS, OpSpec, supported_ops

__all__ = ["HANDLERS", "OpSpec", "supported_ops", "activation", "arithmetic", "conv", "dense", "pool", "tensor"]
