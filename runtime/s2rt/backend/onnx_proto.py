"""Just enough of the protobuf wire format to extend an ONNX model without the onnx package.

The device runtime never imports onnx, yet the predict graph (`s2rt.backend.predict_graph`)
adds a few nodes to the frozen segment. An ONNX file is a protobuf `ModelProto`; this module
splits a message into its top-level fields (bounds-checked: a segment is untrusted bytes)
and encodes the handful of messages the predict graph adds. Field numbers are those of
onnx/onnx.proto (the comments name the message and field).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from s2rt.errors import BackendError

VARINT, I64, LEN, I32 = 0, 1, 2, 5

# onnx.proto field numbers
MODEL_GRAPH = 7  # ModelProto.graph
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT = 1, 5, 11, 12  # GraphProto
VALUE_NAME, VALUE_TYPE = 1, 2  # ValueInfoProto
TYPE_TENSOR = 1  # TypeProto.tensor_type
TENSOR_TYPE_ELEM, TENSOR_TYPE_SHAPE = 1, 2  # TypeProto.Tensor
SHAPE_DIM = 1  # TensorShapeProto.dim
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP_TYPE, NODE_ATTRIBUTE = 1, 2, 3, 4, 5  # NodeProto
ATTR_NAME, ATTR_I, ATTR_TYPE = 1, 3, 20  # AttributeProto
ATTR_TYPE_INT = 2  # AttributeProto.AttributeType.INT
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME, TENSOR_RAW = 1, 2, 8, 9  # TensorProto
FLOAT, INT64 = 1, 7  # TensorProto.DataType


@dataclass(frozen=True)
class Field:
    number: int
    wire: int
    value: int | bytes  # an int for VARINT, the payload bytes otherwise
    raw: bytes  # the whole field as encoded (key included), to copy it unchanged


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise BackendError("the frozen segment is not a valid ONNX model: a varint runs past the end")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise BackendError("the frozen segment is not a valid ONNX model: a varint is longer than 10 bytes")


def fields(buf: bytes) -> list[Field]:
    """The top-level fields of one message, in file order."""
    out, pos = [], 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire == LEN:
            size, pos = _varint(buf, pos)
            if size > len(buf) - pos:
                raise BackendError(
                    f"the frozen segment is not a valid ONNX model: field {number} claims {size} bytes, {len(buf) - pos} remain"
                )
            value, pos = buf[pos : pos + size], pos + size
        elif wire in (I64, I32):
            width = 8 if wire == I64 else 4
            if width > len(buf) - pos:
                raise BackendError(f"the frozen segment is not a valid ONNX model: field {number} runs past the end")
            value, pos = buf[pos : pos + width], pos + width
        else:
            raise BackendError(f"the frozen segment is not a valid ONNX model: field {number} has wire type {wire}")
        out.append(Field(number, wire, value, buf[start:pos]))
    return out


def payload(field: Field) -> bytes:
    if not isinstance(field.value, bytes):
        raise BackendError(f"the frozen segment is not a valid ONNX model: field {field.number} is not a message")
    return field.value


def first(items: Iterable[Field], number: int) -> Field | None:
    return next((f for f in items if f.number == number), None)


# -- encoding --------------------------------------------------------------------------
def varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64s are ten bytes, as protobuf writes them
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def message(number: int, body: bytes) -> bytes:
    return key(number, LEN) + varint(len(body)) + body


def string(number: int, text: str) -> bytes:
    return message(number, text.encode())


def integer(number: int, value: int) -> bytes:
    return key(number, VARINT) + varint(value)


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], **ints: int) -> bytes:
    """A NodeProto (default domain) with integer attributes."""
    body = b"".join(string(NODE_INPUT, name) for name in inputs)
    body += b"".join(string(NODE_OUTPUT, name) for name in outputs)
    body += string(NODE_OP_TYPE, op_type)
    for name, value in ints.items():
        attribute = string(ATTR_NAME, name) + integer(ATTR_I, value) + integer(ATTR_TYPE, ATTR_TYPE_INT)
        body += message(NODE_ATTRIBUTE, attribute)
    return message(GRAPH_NODE, body)


def float_initializer(name: str, array: np.ndarray) -> bytes:
    """A float32 TensorProto in the graph's initializer list."""
    data = np.ascontiguousarray(array, dtype="<f4")
    body = b"".join(integer(TENSOR_DIMS, d) for d in data.shape) + integer(TENSOR_DATA_TYPE, FLOAT)
    body += string(TENSOR_NAME, name) + message(TENSOR_RAW, data.tobytes())
    return message(GRAPH_INITIALIZER, body)


def value_info(number: int, name: str, elem: int, dims: Sequence[int | str]) -> bytes:
    """A tensor ValueInfoProto (a graph input or output) of element type `elem`; a str dim is symbolic."""
    shape = b""
    for d in dims:
        dim = string(2, d) if isinstance(d, str) else integer(1, d)  # Dimension.dim_param / dim_value
        shape += message(SHAPE_DIM, dim)
    tensor = integer(TENSOR_TYPE_ELEM, elem) + message(TENSOR_TYPE_SHAPE, shape)
    return message(number, string(VALUE_NAME, name) + message(VALUE_TYPE, message(TYPE_TENSOR, tensor)))


def renamed_value_info(number: int, value_info: bytes, name: str) -> bytes:
    """The same ValueInfoProto (type and shape kept) under another name."""
    kept = b"".join(f.raw for f in fields(value_info) if f.number != VALUE_NAME)
    return message(number, string(VALUE_NAME, name) + kept)


def value_name(value_info: bytes) -> str:
    name = first(fields(value_info), VALUE_NAME)
    return payload(name).decode("utf-8", "replace") if name is not None else ""


def _tensor_type(value_info: bytes) -> list[Field]:
    type_field = first(fields(value_info), VALUE_TYPE)
    tensor = first(fields(payload(type_field)), TYPE_TENSOR) if type_field is not None else None
    return fields(payload(tensor)) if tensor is not None else []


def elem_type(value_info: bytes) -> int | None:
    """The tensor element type of a ValueInfoProto, or None when it has none."""
    elem = first(_tensor_type(value_info), TENSOR_TYPE_ELEM)
    return elem.value if elem is not None and isinstance(elem.value, int) else None


def rank(value_info: bytes) -> int | None:
    """The number of dimensions of a ValueInfoProto's tensor, or None when it has no shape."""
    shape = first(_tensor_type(value_info), TENSOR_TYPE_SHAPE)
    return None if shape is None else sum(1 for f in fields(payload(shape)) if f.number == SHAPE_DIM)


# -- decoding what the predict graph folds into ----------------------------------------
ATTR_F = 2  # AttributeProto.f
TENSOR_FLOAT_DATA = 4  # TensorProto.float_data


def strings(message_body: bytes, number: int) -> list[str]:
    """A repeated string field of one message (a node's inputs or outputs)."""
    return [payload(f).decode("utf-8", "replace") for f in fields(message_body) if f.number == number]


def attributes(node_body: bytes) -> dict[str, int | float | None]:
    """A node's attributes: an INT's or FLOAT's value, None for any other kind."""
    out: dict[str, int | float | None] = {}
    for f in fields(node_body):
        if f.number != NODE_ATTRIBUTE:
            continue
        attr = fields(payload(f))
        name = first(attr, ATTR_NAME)
        if name is None:
            continue
        i, x = first(attr, ATTR_I), first(attr, ATTR_F)
        value: int | float | None = None
        if i is not None and isinstance(i.value, int):
            value = i.value - (1 << 64) if i.value >= 1 << 63 else i.value
        elif x is not None and isinstance(x.value, bytes) and len(x.value) == 4:
            value = float(np.frombuffer(x.value, "<f4")[0])
        out[payload(name).decode("utf-8", "replace")] = value
    return out


def float_tensor(tensor_body: bytes) -> tuple[str, np.ndarray] | None:
    """(name, values) of a float32 TensorProto stored in the file (raw or float data), else None."""
    items = fields(tensor_body)
    name, dtype = first(items, TENSOR_NAME), first(items, TENSOR_DATA_TYPE)
    if name is None or dtype is None or dtype.value != FLOAT:
        return None
    dims: list[int] = []
    for f in items:
        if f.number != TENSOR_DIMS:
            continue
        if isinstance(f.value, int):
            dims.append(f.value)
        else:  # packed
            pos, body = 0, f.value
            while pos < len(body):
                d, pos = _varint(body, pos)
                dims.append(d)
    if any(d >= 1 << 31 for d in dims):
        return None
    raw = first(items, TENSOR_RAW)
    if raw is not None:
        data = payload(raw)
    else:
        # packed (one LEN field) or not (fixed32 fields one by one): both are little-endian floats
        data = b"".join(f.value for f in items if f.number == TENSOR_FLOAT_DATA and isinstance(f.value, bytes))
    size = math.prod(dims)  # Python ints: no overflow for any dims
    if len(data) != 4 * size:
        return None
    return payload(name).decode("utf-8", "replace"), np.frombuffer(data, "<f4").reshape(dims).astype(np.float32)
