"""Read a .tflite file this package wrote back into an `ir.Graph`, so ops can be added to it
(`s2conv export` from a bundle that has only a TFLite segment).

Only what the emitter writes is understood: one subgraph, builtin ops, float32/int32
tensors, options tables of scalar fields. Anything else is a `ConversionError` naming it.
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np
from s2rt.errors import ConversionError
from tflite.BuiltinOptions import BuiltinOptions
from tflite.Model import Model
from tflite.TensorType import TensorType

from s2conv.tflite.ir import NO_INPUT, Graph, Operator, Options, Tensor

NUMPY_TYPES = {TensorType.FLOAT32: np.dtype(np.float32), TensorType.INT32: np.dtype(np.int32)}
OPTIONS_NAMES = {v: k for k, v in vars(BuiltinOptions).items() if isinstance(v, int)}


def read_graph(data: bytes) -> Graph:
    """The graph of a single-subgraph .tflite file written by `s2conv.tflite`."""
    try:
        model = Model.GetRootAs(data, 0)
        subgraph_count = model.SubgraphsLength()
    except Exception as e:  # the generated reader raises whatever a bad offset provokes
        raise ConversionError(f"not a readable TFLite model: {e}") from e
    if subgraph_count != 1:
        raise ConversionError(f"the TFLite model has {subgraph_count} subgraphs; s2conv writes exactly one")
    subgraph = model.Subgraphs(0)
    graph = Graph(description=(model.Description() or b"").decode("utf-8", "replace"))
    for i in range(subgraph.TensorsLength()):
        graph.tensors.append(_tensor(model, subgraph.Tensors(i)))
    codes = [model.OperatorCodes(i).BuiltinCode() for i in range(model.OperatorCodesLength())]
    for i in range(subgraph.OperatorsLength()):
        graph.operators.append(_operator(subgraph.Operators(i), codes))
    graph.inputs = [int(i) for i in subgraph.InputsAsNumpy()]
    graph.outputs = [int(i) for i in subgraph.OutputsAsNumpy()]
    graph.metadata = _metadata(model)
    return graph


def read_metadata(data: bytes) -> dict[str, bytes]:
    """The named metadata buffers of a .tflite file (its Model's `metadata` table)."""
    try:
        model = Model.GetRootAs(data, 0)
        return _metadata(model)
    except ConversionError:
        raise
    except Exception as e:  # the generated reader raises whatever a bad offset provokes
        raise ConversionError(f"not a readable TFLite model: {e}") from e


def _metadata(model: Model) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        name, index = (entry.Name() or b"").decode("utf-8", "replace"), int(entry.Buffer())
        if not 0 <= index < model.BuffersLength():
            raise ConversionError(f"TFLite metadata {name!r}: buffer {index} out of range (the model has {model.BuffersLength()})")
        buffer = model.Buffers(index)
        out[name] = buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
    return out


def _tensor(model: Model, t: object) -> Tensor:
    name = (t.Name() or b"").decode("utf-8")  # type: ignore[attr-defined]  # internal tensors have none
    if t.Quantization() is not None and t.Quantization().ScaleLength():  # type: ignore[attr-defined]
        raise ConversionError(f"tensor {name!r} is quantized; only float TFLite segments can be read back")
    kind = t.Type()  # type: ignore[attr-defined]
    if kind not in NUMPY_TYPES:
        raise ConversionError(f"tensor {name!r} has TFLite type {kind}; only float32 and int32 are read back")
    dtype = NUMPY_TYPES[kind]
    shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()  # type: ignore[attr-defined]
    signature = tuple(int(d) for d in t.ShapeSignatureAsNumpy()) if t.ShapeSignatureLength() else None  # type: ignore[attr-defined]
    buffer = model.Buffers(t.Buffer())  # type: ignore[attr-defined]
    data = None
    if buffer is not None and buffer.DataLength():
        data = np.frombuffer(buffer.DataAsNumpy().tobytes(), dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    return Tensor(name, shape, dtype, data=data, signature=signature)


def _operator(op: object, codes: list[int]) -> Operator:
    code = codes[op.OpcodeIndex()]  # type: ignore[attr-defined]
    inputs = [int(i) if i >= 0 else NO_INPUT for i in op.InputsAsNumpy()] if op.InputsLength() else []  # type: ignore[attr-defined]
    outputs = [int(i) for i in op.OutputsAsNumpy()]  # type: ignore[attr-defined]
    kind = op.BuiltinOptionsType()  # type: ignore[attr-defined]
    options = _options(OPTIONS_NAMES[kind], op.BuiltinOptions()) if kind else None  # type: ignore[attr-defined]
    return Operator(code, inputs, outputs, options)


def _options(kind: str, table: object) -> Options:
    """The table's scalar fields, named as the builder's `<Kind>Add<Field>` functions name them."""
    module = importlib.import_module(f"tflite.{kind}")
    reader = getattr(module, kind)()
    reader.Init(table.Bytes, table.Pos)  # type: ignore[attr-defined]
    fields = {}
    prefix = f"{kind}Add"
    for function_name, _ in inspect.getmembers(module, inspect.isfunction):
        if not function_name.startswith(prefix):
            continue
        field = function_name[len(prefix) :]
        if hasattr(reader, f"{field}Length"):
            if getattr(reader, f"{field}Length")():
                raise ConversionError(f"{kind}.{field} is a vector; s2conv writes only scalar option fields")
            continue
        fields[field] = getattr(reader, field)()
    return Options(kind, fields)
