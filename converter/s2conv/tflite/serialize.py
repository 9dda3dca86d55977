"""Write an `ir.Graph` as a .tflite FlatBuffer with the `tflite` package's schema bindings.

Builder functions are imported from the schema submodules (`tflite.Model.ModelStart`):
the package's `__init__` star-imports every module and the short names collide.
Buffer 0 is the empty sentinel the format reserves; every OperatorCode sets both
`deprecated_builtin_code` (int8, op codes below 127) and `builtin_code`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import flatbuffers
import numpy as np
from tflite.Buffer import BufferAddData, BufferEnd, BufferStart
from tflite.BuiltinOptions import BuiltinOptions
from tflite.Model import (
    ModelAddBuffers,
    ModelAddDescription,
    ModelAddOperatorCodes,
    ModelAddSubgraphs,
    ModelAddVersion,
    ModelEnd,
    ModelStart,
)
from tflite.Operator import (
    OperatorAddBuiltinOptions,
    OperatorAddBuiltinOptionsType,
    OperatorAddInputs,
    OperatorAddOpcodeIndex,
    OperatorAddOutputs,
    OperatorEnd,
    OperatorStart,
)
from tflite.OperatorCode import (
    OperatorCodeAddBuiltinCode,
    OperatorCodeAddDeprecatedBuiltinCode,
    OperatorCodeAddVersion,
    OperatorCodeEnd,
    OperatorCodeStart,
)
from tflite.QuantizationParameters import (
    QuantizationParametersAddQuantizedDimension,
    QuantizationParametersAddScale,
    QuantizationParametersAddZeroPoint,
    QuantizationParametersEnd,
    QuantizationParametersStart,
)
from tflite.SubGraph import (
    SubGraphAddInputs,
    SubGraphAddName,
    SubGraphAddOperators,
    SubGraphAddOutputs,
    SubGraphAddTensors,
    SubGraphEnd,
    SubGraphStart,
)
from tflite.Tensor import (
    TensorAddBuffer,
    TensorAddName,
    TensorAddQuantization,
    TensorAddShape,
    TensorAddShapeSignature,
    TensorAddType,
    TensorEnd,
    TensorStart,
)

from s2conv.tflite.ir import TENSOR_TYPES, Graph, Operator, Options, Quantization, Tensor

SCHEMA_VERSION = 3  # the TFLite schema's model version
FILE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16  # what the TFLite converter uses; XNNPACK reads weights in place
MAX_DEPRECATED_CODE = 127  # deprecated_builtin_code is an int8; larger codes store this placeholder


def serialize(graph: Graph) -> bytes:
    """The .tflite file of `graph` (one subgraph)."""
    b = flatbuffers.Builder(1024 + sum(t.data.nbytes for t in graph.tensors if t.data is not None))
    opcodes = sorted({op.opcode for op in graph.operators})
    opcode_index = {code: i for i, code in enumerate(opcodes)}
    buffers, buffer_index = _buffers(b, graph.tensors)
    tensors = [_tensor(b, t, buffer_index.get(i, 0)) for i, t in enumerate(graph.tensors)]
    operators = [_operator(b, op, opcode_index[op.opcode]) for op in graph.operators]
    name = b.CreateString("main")
    tensor_vec = _offsets(b, tensors)
    operator_vec = _offsets(b, operators)
    inputs, outputs = _ints(b, graph.inputs), _ints(b, graph.outputs)
    SubGraphStart(b)
    SubGraphAddTensors(b, tensor_vec)
    SubGraphAddInputs(b, inputs)
    SubGraphAddOutputs(b, outputs)
    SubGraphAddOperators(b, operator_vec)
    SubGraphAddName(b, name)
    subgraph = SubGraphEnd(b)

    codes = _offsets(b, [_operator_code(b, code) for code in opcodes])
    subgraphs = _offsets(b, [subgraph])
    buffer_vec = _offsets(b, buffers)
    description = b.CreateString(graph.description)
    ModelStart(b)
    ModelAddVersion(b, SCHEMA_VERSION)
    ModelAddOperatorCodes(b, codes)
    ModelAddSubgraphs(b, subgraphs)
    ModelAddDescription(b, description)
    ModelAddBuffers(b, buffer_vec)
    b.Finish(ModelEnd(b), file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def _buffers(b: flatbuffers.Builder, tensors: Sequence[Tensor]) -> tuple[list[int], dict[int, int]]:
    """Buffer 0 (empty), then one buffer per constant tensor; maps tensor index -> buffer index."""
    BufferStart(b)
    buffers = [BufferEnd(b)]
    index: dict[int, int] = {}
    for i, tensor in enumerate(tensors):
        if tensor.data is None:
            continue
        data = _aligned_bytes(b, np.ascontiguousarray(tensor.data, dtype=tensor.dtype.newbyteorder("<")).tobytes())
        BufferStart(b)
        BufferAddData(b, data)
        index[i] = len(buffers)
        buffers.append(BufferEnd(b))
    return buffers, index


def _tensor(b: flatbuffers.Builder, tensor: Tensor, buffer: int) -> int:
    name = b.CreateString(tensor.name)
    shape = _ints(b, tensor.shape)
    signature = _ints(b, tensor.signature) if tensor.signature is not None else None
    quantization = _quantization(b, tensor.quantization) if tensor.quantization is not None else None
    TensorStart(b)
    TensorAddShape(b, shape)
    if signature is not None:
        TensorAddShapeSignature(b, signature)
    TensorAddType(b, TENSOR_TYPES[tensor.dtype])
    TensorAddBuffer(b, buffer)
    TensorAddName(b, name)
    if quantization is not None:
        TensorAddQuantization(b, quantization)
    return int(TensorEnd(b))


def _quantization(b: flatbuffers.Builder, q: Quantization) -> int:
    scale = b.CreateNumpyVector(np.asarray(q.scale, dtype="<f4"))
    zero_point = b.CreateNumpyVector(np.asarray(q.zero_point, dtype="<i8"))
    QuantizationParametersStart(b)
    QuantizationParametersAddScale(b, scale)
    QuantizationParametersAddZeroPoint(b, zero_point)
    QuantizationParametersAddQuantizedDimension(b, q.dimension)
    return int(QuantizationParametersEnd(b))


def _operator(b: flatbuffers.Builder, op: Operator, opcode_index: int) -> int:
    options = _options(b, op.options) if op.options is not None else None
    inputs, outputs = _ints(b, op.inputs), _ints(b, op.outputs)
    OperatorStart(b)
    OperatorAddOpcodeIndex(b, opcode_index)
    OperatorAddInputs(b, inputs)
    OperatorAddOutputs(b, outputs)
    if op.options is not None and options is not None:
        OperatorAddBuiltinOptionsType(b, getattr(BuiltinOptions, op.options.kind))
        OperatorAddBuiltinOptions(b, options)
    return int(OperatorEnd(b))


def _options(b: flatbuffers.Builder, options: Options) -> int:
    """An options table through its generated module: `<Kind>Start`, `<Kind>Add<Field>`, `<Kind>End`."""
    module = importlib.import_module(f"tflite.{options.kind}")
    function: Callable[..., Any] = getattr(module, f"{options.kind}Start")
    function(b)
    for name, value in options.fields.items():
        getattr(module, f"{options.kind}Add{name}")(b, value)
    return int(getattr(module, f"{options.kind}End")(b))


def _operator_code(b: flatbuffers.Builder, code: int) -> int:
    OperatorCodeStart(b)
    OperatorCodeAddDeprecatedBuiltinCode(b, min(code, MAX_DEPRECATED_CODE))
    OperatorCodeAddBuiltinCode(b, code)
    OperatorCodeAddVersion(b, 1)
    return int(OperatorCodeEnd(b))


def _aligned_bytes(b: flatbuffers.Builder, data: bytes) -> int:
    n = len(data)
    b.StartVector(1, n, BUFFER_ALIGNMENT)
    b.head = b.head - n
    b.Bytes[b.head : b.head + n] = data
    return int(b.EndVector())


def _ints(b: flatbuffers.Builder, values: Sequence[int]) -> int:
    return int(b.CreateNumpyVector(np.asarray(values, dtype="<i4").reshape(-1)))


def _offsets(b: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return int(b.EndVector())
