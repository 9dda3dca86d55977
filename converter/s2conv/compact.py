"""Compact: the frozen ONNX segment without what the device's onnxruntime never reads.

A small model's graph description can outweigh its int8 weights: the exporter's tensor
and node names, the shape annotations of every intermediate tensor, default-valued
attributes and the Identity nodes that export each output. `compact_segment` removes
them and leaves the computation untouched (same ops, same constants, same output values):

- an Identity that only renames an internal tensor to a graph output goes; the tensor
  takes the output's name;
- every internal tensor gets a short name (the graph's input and output names stay: the
  bundle refers to them), and node names, doc strings, `value_info` and model metadata go;
- attributes equal to their schema default go;
- equal constants (same type, shape and bytes, e.g. the zero points of two layers with as
  many channels) are stored once.

What stays although ONNX would allow dropping it: the all-zero zero points of symmetric
int8 weights. onnxruntime fuses DequantizeLinear ▸ Gemm ▸ QuantizeLinear into one QGemm
only when every zero point is there; without them it runs the float Gemm.

A graph with subgraphs (If, Loop, Scan) keeps its names: a subgraph may read any outer
name, so renaming there needs a scope analysis this pass does not do.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import onnx
from onnx import defs, helper, numpy_helper

from s2conv.version import PRODUCER, __version__

DEFAULT_DOMAINS = ("", "ai.onnx")


def compact_segment(model: onnx.ModelProto) -> onnx.ModelProto:
    """A compacted copy of `model` (which is left untouched)."""
    compact = onnx.ModelProto()
    compact.CopyFrom(model)
    graph = compact.graph
    _fold_output_identities(graph)
    _drop_unread_initialisers(graph)
    _share_equal_constants(graph)
    _drop_default_attributes(graph, _opset(compact))
    if not _has_subgraphs(graph):
        _shorten_names(graph)
    _drop_annotations(compact)
    return compact


def _fold_output_identities(graph: onnx.GraphProto) -> None:
    outputs = {o.name for o in graph.output}
    fixed = outputs | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in list(graph.node):
        if node.op_type != "Identity" or node.domain not in DEFAULT_DOMAINS or node.output[0] not in outputs:
            continue
        source, output = node.input[0], node.output[0]
        if source in fixed:  # the graph input, an initialiser or another output: the Identity must stay
            continue
        graph.node.remove(node)
        _rename(graph, {source: output})
        fixed.add(output)


def _drop_unread_initialisers(graph: onnx.GraphProto) -> None:
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for init in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(init)


def _share_equal_constants(graph: onnx.GraphProto) -> None:
    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    renames: dict[str, str] = {}
    outputs = {o.name for o in graph.output}
    for init in graph.initializer:
        if init.name in outputs:
            continue
        key = (init.data_type, tuple(init.dims), numpy_helper.to_array(init).tobytes())
        if key in first:
            renames[init.name] = first[key]
        else:
            first[key] = init.name
    for init in [t for t in graph.initializer if t.name in renames]:
        graph.initializer.remove(init)
    _rename(graph, renames)


def _drop_default_attributes(graph: onnx.GraphProto, opset: int) -> None:
    for node in graph.node:
        if node.domain not in DEFAULT_DOMAINS or not defs.has(node.op_type):
            continue
        schema = defs.get_schema(node.op_type, opset)
        kept = [a for a in node.attribute if not _is_default(a, schema.attributes.get(a.name))]
        if len(kept) < len(node.attribute):
            del node.attribute[:]
            node.attribute.extend(kept)


def _is_default(attribute: onnx.AttributeProto, spec: defs.OpSchema.Attribute | None) -> bool:
    if spec is None or not spec.default_value.name or attribute.ref_attr_name:
        return False
    return bool(helper.get_attribute_value(attribute) == helper.get_attribute_value(spec.default_value))


def _shorten_names(graph: onnx.GraphProto) -> None:
    kept = {i.name for i in graph.input} | {o.name for o in graph.output}
    internal = [t.name for t in graph.initializer] + [name for node in graph.node for name in node.output]
    fresh = (name for name in _short_names() if name not in kept)
    renames = {name: next(fresh) for name in dict.fromkeys(internal) if name and name not in kept}
    _rename(graph, renames)


def _short_names() -> Iterator[str]:
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    for length in itertools.count(1):
        for letters in itertools.product(alphabet, repeat=length):
            yield "".join(letters)


def _rename(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    for init in graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]


def _drop_annotations(model: onnx.ModelProto) -> None:
    graph = model.graph
    # ClearField, not "": protobuf 2 semantics serialise an empty string that was set.
    for node in graph.node:
        for name in ("name", "doc_string", "metadata_props", *(("domain",) if node.domain == "" else ())):
            node.ClearField(name)
    for name in ("value_info", "doc_string"):
        graph.ClearField(name)
    for name in ("metadata_props", "doc_string"):
        model.ClearField(name)
    model.producer_name = PRODUCER
    model.producer_version = __version__


def _has_subgraphs(graph: onnx.GraphProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), defs.onnx_opset_version())
