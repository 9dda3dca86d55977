"""The TFLite graph being built: tensors, operators and their options, before serialisation.

Kept apart from the FlatBuffers writer so that handlers can still change an operator
after adding it (fold a BatchNormalization into a conv's weights, fuse a Relu into its
options) — a FlatBuffer cannot be edited once written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from tflite.ActivationFunctionType import ActivationFunctionType
from tflite.BuiltinOperator import BuiltinOperator
from tflite.TensorType import TensorType

TENSOR_TYPES = {
    np.dtype(np.float32): TensorType.FLOAT32,
    np.dtype(np.int32): TensorType.INT32,
    np.dtype(np.int8): TensorType.INT8,  # quantized weights and activations (s2conv.tflite.quantize)
}
FUSED_ACTIVATION_FIELD = "FusedActivationFunction"
NO_INPUT = -1  # an optional operator input left out, as the TFLite schema spells it


@dataclass
class Options:
    """A builtin options table: its schema name (`Conv2DOptions`) and fields (`StrideW`: 1)."""

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def fused_activation(self) -> int | None:
        """The fused activation, or None if this options table has no such field."""
        return self.fields.get(FUSED_ACTIVATION_FIELD)


# Options tables whose op applies a fused activation (checked against LiteRT in the op tests).
OPTIONS_WITH_ACTIVATION = frozenset(
    {
        "FullyConnectedOptions",
        "Conv2DOptions",
        "DepthwiseConv2DOptions",
        "Pool2DOptions",
        "AddOptions",
        "SubOptions",
        "MulOptions",
        "DivOptions",
    }
)  # CONCATENATION has the field too, but its kernels ignore it


@dataclass(frozen=True)
class Quantization:
    """real = scale * (stored - zero_point); one entry per tensor, or per channel along `dimension`."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    dimension: int = 0


@dataclass
class Tensor:
    """`shape` is what the file records (batch 1); `signature` has -1 where the batch goes."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data: np.ndarray | None = None  # constant contents; None for computed tensors
    signature: tuple[int, ...] | None = None
    quantization: Quantization | None = None  # int8 / int32 tensors of a quantized model

    @property
    def is_constant(self) -> bool:
        return self.data is not None


@dataclass
class Operator:
    opcode: int  # a BuiltinOperator value
    inputs: list[int]
    outputs: list[int]
    options: Options | None = None

    @property
    def name(self) -> str:
        return _OPCODE_NAMES.get(self.opcode, str(self.opcode))

    def fuse_activation(self, activation: int) -> bool:
        """Set the fused activation if the op has one and none is set yet; say whether it did."""
        if self.options is None or self.options.kind not in OPTIONS_WITH_ACTIVATION:
            return False
        if self.options.fields.get(FUSED_ACTIVATION_FIELD, ActivationFunctionType.NONE) != ActivationFunctionType.NONE:
            return False
        self.options.fields[FUSED_ACTIVATION_FIELD] = activation
        return True

    @property
    def has_fused_activation(self) -> bool:
        return bool(self.options and self.options.fields.get(FUSED_ACTIVATION_FIELD, ActivationFunctionType.NONE))


_OPCODE_NAMES = {v: k for k, v in vars(BuiltinOperator).items() if isinstance(v, int)}


@dataclass
class Graph:
    """One subgraph; tensors and operators are appended in execution order."""

    tensors: list[Tensor] = field(default_factory=list)
    operators: list[Operator] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    description: str = ""
    metadata: dict[str, bytes] = field(default_factory=dict)  # the Model's named metadata buffers

    def add_tensor(self, tensor: Tensor) -> int:
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def constant(self, name: str, value: ArrayLike, dtype: type = np.float32) -> int:
        array: np.ndarray = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        if array.dtype not in TENSOR_TYPES:
            raise TypeError(f"no TFLite tensor type for {array.dtype}")
        return self.add_tensor(Tensor(self.unique_name(name), tuple(array.shape), array.dtype, data=array))

    def add_operator(self, opcode: int, inputs: list[int], outputs: list[int], options: Options | None = None) -> Operator:
        op = Operator(opcode, inputs, outputs, options)
        self.operators.append(op)
        return op

    def producer(self, tensor: int) -> Operator | None:
        for op in reversed(self.operators):
            if tensor in op.outputs:
                return op
        return None

    def unique_name(self, name: str) -> str:
        taken = {t.name for t in self.tensors}
        if name not in taken:
            return name
        n = 1
        while f"{name}_{n}" in taken:
            n += 1
        return f"{name}_{n}"
