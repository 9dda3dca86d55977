"""Write an `ir.Graph` as a .tflite FlatBuffer with the `tflite` package's schema bindings.

Builder functions are imported from the schema submodules (`tflite.Model.ModelStart`):
the package's `__init__` star-imports every module and the short names collide.
Buffer 0 is the empty sentinel the format reserves; every OperatorCode sets both
`deprecated_builtin_code` (int8, op codes below 127) and `builtin_code`.

Each distinct vector (shape, operator inputs, quantization scales and zero points) and
string is written once and every table that holds it points at that copy: FlatBuffers
offsets may share a target, and readers only follow them. The per-channel zero points,
all 0 and int64, would otherwise be stored once per weight and once per bias.
A tensor named "" gets no name field, the subgraph none either (nothing looks it up).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import flatbuffers
import numpy as np
from tflite.Buffer import BufferAddData, BufferEnd, BufferStart
from tflite.BuiltinOptions import BuiltinOptions
from tflite.Metadata import MetadataAddBuffer, MetadataAddName, MetadataEnd, MetadataStart
from tflite.Model import (
    ModelAddBuffers,
    ModelAddDescription,
    ModelAddMetadata,
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
    w = _Writer(1024 + sum(t.data.nbytes for t in graph.tensors if t.data is not None))
    b = w.builder
    opcodes = sorted({op.opcode for op in graph.operators})
    opcode_index = {code: i for i, code in enumerate(opcodes)}
    buffers, buffer_index = _buffers(b, graph.tensors)
    metadata = _metadata(w, graph.metadata, buffers)
    tensors = [_tensor(w, t, buffer_index.get(i, 0)) for i, t in enumerate(graph.tensors)]
    operators = [_operator(w, op, opcode_index[op.opcode]) for op in graph.operators]
    tensor_vec = _offsets(b, tensors)
    operator_vec = _offsets(b, operators)
    inputs, outputs = w.ints(graph.inputs), w.ints(graph.outputs)
    SubGraphStart(b)
    SubGraphAddTensors(b, tensor_vec)
    SubGraphAddInputs(b, inputs)
    SubGraphAddOutputs(b, outputs)
    SubGraphAddOperators(b, operator_vec)
    subgraph = SubGraphEnd(b)

    codes = _offsets(b, [_operator_code(b, code) for code in opcodes])
    subgraphs = _offsets(b, [subgraph])
    buffer_vec = _offsets(b, buffers)
    description = w.string(graph.description) if graph.description else None
    ModelStart(b)
    ModelAddVersion(b, SCHEMA_VERSION)
    ModelAddOperatorCodes(b, codes)
    ModelAddSubgraphs(b, subgraphs)
    if description is not None:
        ModelAddDescription(b, description)
    if metadata is not None:
        ModelAddMetadata(b, metadata)
    ModelAddBuffers(b, buffer_vec)
    b.Finish(ModelEnd(b), file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


class _Writer:
    """The builder, and the offset of every vector and string already written."""

    def __init__(self, size: int) -> None:
        self.builder = flatbuffers.Builder(size)
        self._vectors: dict[tuple[str, bytes], int] = {}

    def vector(self, values: object, dtype: str) -> int:
        array = np.ascontiguousarray(np.asarray(values, dtype=dtype).reshape(-1))
        key = (array.dtype.str, array.tobytes())
        if key not in self._vectors:
            self._vectors[key] = int(self.builder.CreateNumpyVector(array))
        return self._vectors[key]

    def ints(self, values: Sequence[int]) -> int:
        return self.vector(values, "<i4")

    def string(self, text: str) -> int:
        return int(self.builder.CreateSharedString(text))


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


def _metadata(w: _Writer, metadata: dict[str, bytes], buffers: list[int]) -> int | None:
    """The Model's `metadata` vector: per entry its name and a new buffer (appended to
    `buffers`) holding its bytes; None without entries."""
    b = w.builder
    entries = []
    for name, data in metadata.items():
        vector = _aligned_bytes(b, data)
        BufferStart(b)
        BufferAddData(b, vector)
        buffers.append(BufferEnd(b))
        text = w.string(name)
        MetadataStart(b)
        MetadataAddName(b, text)
        MetadataAddBuffer(b, len(buffers) - 1)
        entries.append(int(MetadataEnd(b)))
    return _offsets(b, entries) if entries else None


def _tensor(w: _Writer, tensor: Tensor, buffer: int) -> int:
    name = w.string(tensor.name) if tensor.name else None
    shape = w.ints(tensor.shape)
    signature = w.ints(tensor.signature) if tensor.signature is not None else None
    quantization = _quantization(w, tensor.quantization) if tensor.quantization is not None else None
    b = w.builder
    TensorStart(b)
    TensorAddShape(b, shape)
    if signature is not None:
        TensorAddShapeSignature(b, signature)
    TensorAddType(b, TENSOR_TYPES[tensor.dtype])
    TensorAddBuffer(b, buffer)
    if name is not None:
        TensorAddName(b, name)
    if quantization is not None:
        TensorAddQuantization(b, quantization)
    return int(TensorEnd(b))


def _quantization(w: _Writer, q: Quantization) -> int:
    scale = w.vector(q.scale, "<f4")
    zero_point = w.vector(q.zero_point, "<i8")
    b = w.builder
    QuantizationParametersStart(b)
    QuantizationParametersAddScale(b, scale)
    QuantizationParametersAddZeroPoint(b, zero_point)
    QuantizationParametersAddQuantizedDimension(b, q.dimension)
    return int(QuantizationParametersEnd(b))


def _operator(w: _Writer, op: Operator, opcode_index: int) -> int:
    b = w.builder
    options = _options(b, op.options) if op.options is not None else None
    inputs, outputs = w.ints(op.inputs), w.ints(op.outputs)
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


def _offsets(b: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return int(b.EndVector())
