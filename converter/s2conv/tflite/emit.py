"""ONNX frozen segment -> .tflite bytes, with no TensorFlow: the steps.

    shape-infer (pinning computed Reshape targets) ▸ fold constants ▸ find the nodes the outputs need (all supported?) ▸
    check shapes (batch first, everything else fixed) ▸ one handler per node ▸ name the
    outputs ▸ compact (shared constants, internal names dropped: `compact.py`) ▸ serialise

The TFLite model has the ONNX model's input (same name, same NCHW/NC layout) and its
outputs under the same names, in the same layout, so a runtime maps them by name.
Shapes record batch 1 with -1 in `shape_signature`: resize the input to run a batch.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence

import onnx
from onnx import TensorProto, helper
from s2rt.errors import ConversionError, UnsupportedGraphError, UnsupportedOpError

from s2conv.graph import DEFAULT_DOMAINS, OnnxNode, node_view
from s2conv.tflite.compact import compact
from s2conv.tflite.constants import Shape, fold_constants
from s2conv.tflite.context import EmitContext
from s2conv.tflite.ir import Graph
from s2conv.tflite.layout import BATCH, identity
from s2conv.tflite.ops import HANDLERS, supported_ops
from s2conv.tflite.reshape import pin_computed_reshapes
from s2conv.tflite.serialize import serialize
from s2conv.version import PRODUCER, __version__

log = logging.getLogger(__name__)


def onnx_to_tflite(model: onnx.ModelProto, metadata: Mapping[str, bytes] | None = None) -> bytes:
    """The .tflite file computing `model`'s outputs from its one input (float32, batch first);
    see `onnx_to_graph`. Only the input and the outputs are named in the file. `metadata`:
    named byte strings for the Model's metadata table."""
    graph = onnx_to_graph(model)
    graph.metadata.update(metadata or {})
    return serialize(compact(graph))


def onnx_to_graph(model: onnx.ModelProto) -> Graph:
    """The TFLite graph (not yet serialised) computing `model`'s outputs from its one input.

    Raises `UnsupportedOpError` naming the node, its op and the supported ops when a node
    the outputs need has no handler; `UnsupportedGraphError` when a supported op is used
    in a way the emitter cannot express (a non-constant weight, a grouped conv, ...).
    """
    inferred = _infer_shapes(model)
    nodes = [node_view(i, n) for i, n in enumerate(inferred.graph.node)]
    pinned = pin_computed_reshapes(inferred, nodes, _known_shapes(inferred))
    if pinned is not None:
        inferred = _infer_shapes(pinned)
        nodes = [node_view(i, n) for i, n in enumerate(inferred.graph.node)]
    graph = inferred.graph
    input_name = _single_input(graph)
    outputs = [o.name for o in graph.output]
    constants = fold_constants(inferred, nodes)
    needed = _needed_nodes(nodes, outputs, constants, input_name)
    shapes = _data_shapes(inferred, needed, input_name, constants)
    consumers = Counter(name for node in needed for name in dict.fromkeys(node.inputs) if name)
    ctx = EmitContext(shapes, constants, consumers, outputs, _opset(model))
    ctx.add_input(input_name)
    for node in needed:
        ctx.node = node
        HANDLERS[node.op].emit(ctx, node)
    ctx.node = None
    _name_outputs(ctx, outputs)
    ctx.graph.description = f"{PRODUCER} {__version__}"
    log.debug("tflite: %d nodes -> %d operators", len(needed), len(ctx.graph.operators))
    return ctx.graph


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as e:
        raise ConversionError(f"the TFLite emitter needs every tensor's shape, but shape inference failed: {e}") from e


def _known_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Every value's shape as far as inference knows it: None for a symbolic or unknown size."""
    infos = (*model.graph.input, *model.graph.value_info, *model.graph.output)
    return {
        i.name: tuple(d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim)
        for i in infos
        if i.type.tensor_type.HasField("shape")
    }


def _single_input(graph: onnx.GraphProto) -> str:
    initialisers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise UnsupportedGraphError(f"the TFLite emitter needs exactly one graph input, found {[i.name for i in inputs]}")
    kind = inputs[0].type.WhichOneof("value")
    if kind != "tensor_type":
        found = kind.removesuffix("_type") if kind else "of no type"
        raise UnsupportedGraphError(f"input {inputs[0].name!r} is {found}, not a tensor; the TFLite segment takes one float32 tensor")
    elem_type = inputs[0].type.tensor_type.elem_type
    if elem_type != TensorProto.FLOAT:
        raise UnsupportedGraphError(
            f"input {inputs[0].name!r} is {helper.tensor_dtype_to_string(elem_type)}; the TFLite segment takes float32 only"
        )
    return inputs[0].name


def _needed_nodes(nodes: Sequence[OnnxNode], outputs: Sequence[str], constants: Mapping[str, object], input_name: str) -> list[OnnxNode]:
    """The nodes that compute the outputs' values, in graph order; UnsupportedOpError listing
    every one without a handler. Inputs that a handler reads as constants (a Reshape's
    target shape, say) are not followed."""
    producers = {out: node for node in nodes for out in node.outputs if out}
    wanted, needed, unsupported = list(outputs), {}, {}
    while wanted:
        name = wanted.pop()
        node = producers.get(name)
        if name in constants or name == input_name or node is None or node.index in needed:
            continue
        needed[node.index] = node
        spec = HANDLERS.get(node.op) if node.domain in DEFAULT_DOMAINS else None
        if spec is None:
            unsupported[node.index] = node
        wanted.extend(n for i, n in enumerate(node.inputs) if n and (spec is None or spec.carries_data(i)))
    if unsupported:
        listed = "; ".join(f"op {_op(n)} in {n.label}" for n in sorted(unsupported.values(), key=lambda n: n.index))
        raise UnsupportedOpError(
            f"the TFLite emitter has no handler for {listed}. Supported ops: {', '.join(supported_ops())}. "
            "Convert with --backend onnx to keep only the ONNX segment"
        )
    return [needed[i] for i in sorted(needed)]


def _op(node: OnnxNode) -> str:
    return node.op if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op}"


def _data_shapes(
    model: onnx.ModelProto, nodes: Sequence[OnnxNode], input_name: str, constants: Mapping[str, object]
) -> dict[str, tuple[int, ...]]:
    """The full shape of every data tensor the nodes read or write, batch as BATCH; every
    other dimension must be a fixed size."""
    infos = {i.name: i for i in (*model.graph.input, *model.graph.value_info, *model.graph.output)}
    read = {n for node in nodes for i, n in enumerate(node.inputs) if n and HANDLERS[node.op].carries_data(i)}
    written = {n for node in nodes for n in node.outputs if n}
    names = ({input_name} | read | written) - constants.keys()
    producers = {out: node for node in nodes for out in node.outputs if out}
    shapes = {}
    for name in names:
        info = infos.get(name)
        if info is None:
            continue  # a folded constant, or an output nobody reads (Dropout's mask)
        dims = info.type.tensor_type.shape.dim
        fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if not dims or dims[0].HasField("dim_value") or any(d is None or d < 1 for d in fixed[1:]):
            shown = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
            made_by = f"output of {producers[name].label}" if name in producers else "the graph input"
            raise UnsupportedGraphError(
                f"tensor {name!r} ({made_by}) has shape {shown}: the TFLite emitter needs a free batch size first and "
                "fixed sizes for every other dimension"
            )
        shapes[name] = (BATCH, *(int(d) for d in fixed[1:] if d is not None))
    return shapes


def _name_outputs(ctx: EmitContext, outputs: Sequence[str]) -> None:
    """Each output in ONNX layout, in a tensor of its own carrying the output's name."""
    for name in outputs:
        index = ctx.data(name, identity(ctx.rank(name)))
        if index in ctx.graph.inputs or index in ctx.graph.outputs:
            copy = ctx.temp(name, ctx.shape(name))
            ctx.reshape(index, copy)
            index = copy
        for other, tensor in enumerate(ctx.graph.tensors):
            if tensor.name == name and other != index:
                tensor.name = ctx.graph.unique_name(f"{name}/inner")
        ctx.tensor(index).name = name
        ctx.graph.outputs.append(index)


def _opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in DEFAULT_DOMAINS:
            return int(opset.version)
    return onnx.defs.onnx_opset_version()
