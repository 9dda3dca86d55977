"""Stage 3, split: cut the frozen segment out of the source model by tensor names.

After onnx's `utils.Extractor`: validate every boundary name first, then collect the
nodes reachable from the wanted outputs (keeping the source's topological order) and the
initialisers they read, and make a new model. The segment's outputs are the taps
(`s2l.tap.0`, `s2l.tap.1`, …) and the frozen logits (`s2l.logits`), each added through an
Identity (a Cast to float32 for other float types), so that a tap may be the graph input
itself. A feature-map tap is pooled on the way out (`reduce.py`). The batch dimension
of the input and of every output is symbolic (`batch`); a model exported with a fixed
batch gets its batch freed (`batch.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper
from s2rt.bundle.model import InputSignature
from s2rt.errors import ConversionError

from s2conv.analyse import TapPlan
from s2conv.batch import fixed_batch, free_batch
from s2conv.deterministic import check_deterministic
from s2conv.per_sample import check_batches_agree
from s2conv.reduce import Pooling, pooling_nodes
from s2conv.version import PRODUCER, __version__

log = logging.getLogger(__name__)

TAP_OUTPUT_PREFIX = "s2l.tap."
LOGITS_OUTPUT = "s2l.logits"
BATCH_DIM = "batch"
# Op domains that a stock onnxruntime implements.
ONNXRUNTIME_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


@dataclass(frozen=True)
class SegmentOutput:
    """One output of the segment: its name there, the source tensor, its per-sample shape
    (after pooling) and how it is pooled (None: passed through)."""

    name: str
    source: str
    shape: tuple[int, ...]
    elem_type: int
    pooling: Pooling | None = None


def tap_output_name(index: int) -> str:
    return f"{TAP_OUTPUT_PREFIX}{index}"


def segment_outputs(plan: TapPlan) -> tuple[SegmentOutput, ...]:
    """The taps in order, then the logits."""
    taps = tuple(
        SegmentOutput(tap_output_name(i), tap.source, tap.shape, tap.elem_type, tap.pooling) for i, tap in enumerate(plan.taps)
    )
    return (*taps, SegmentOutput(LOGITS_OUTPUT, plan.logits, (plan.num_outputs,), plan.logits_elem_type))


def extract_segment(model: onnx.ModelProto, signature: InputSignature, outputs: Sequence[SegmentOutput]) -> onnx.ModelProto:
    """The frozen segment: `signature.name` in, every `outputs[i].name` out (float32).

    Raises `ConversionError` naming the tensor if a boundary name is unknown, an output
    name is already taken, or the outputs need another graph input; naming the node if
    it is random or mixes a batch's samples (`deterministic.py`); if the result fails
    the ONNX checker; and if an output's batch size is fixed by the model (say, by a
    Reshape to a constant shape) or a batch gives other outputs than its samples one at
    a time (`per_sample.py`), because s2l runs batches of any size.
    """
    graph = model.graph
    _validate_boundary(graph, signature.name, outputs)
    nodes = _reachable_nodes(graph, signature.name, [o.source for o in outputs])
    check_deterministic(graph, nodes)
    batch = fixed_batch(graph, signature.name)
    freed_shapes: list[onnx.TensorProto] = []
    if batch is not None:
        nodes, freed_shapes = free_batch(graph, nodes, batch)
    segment_graph = helper.make_graph(
        nodes=[*nodes, *(node for o in outputs for node in _export_nodes(o))],
        name=f"{graph.name or 'model'}_s2l_frozen",
        inputs=[_input_info(graph, signature)],
        outputs=[helper.make_tensor_value_info(o.name, TensorProto.FLOAT, [BATCH_DIM, *o.shape]) for o in outputs],
        initializer=[*_used_initialisers(graph, nodes), *freed_shapes],
        doc_string="s2l frozen segment: outputs every tap and the frozen logits",
    )
    segment = _make_model(model, segment_graph)
    _check(segment)
    _check_batch_is_free(segment, outputs)
    source_input = next(i for i in graph.input if i.name == signature.name)
    sources = {o.name: o.source for o in outputs}
    check_batches_agree(segment, signature.name, signature.shape, source_input.type.tensor_type.elem_type, batch, sources)
    _warn_about_custom_ops(nodes)
    log.debug("segment: %d of %d nodes, %d outputs", len(nodes), len(graph.node), len(outputs))
    return segment


def _validate_boundary(graph: onnx.GraphProto, input_name: str, outputs: Sequence[SegmentOutput]) -> None:
    if input_name not in {i.name for i in graph.input}:
        raise ConversionError(f"segment input {input_name!r} is not an input of graph {graph.name!r}")
    known = _tensor_names(graph)
    for output in outputs:
        if output.source not in known:
            raise ConversionError(f"segment output {output.name!r}: no tensor {output.source!r} in the model")
        if output.name in known:
            raise ConversionError(
                f"the model already has a tensor named {output.name!r}, which s2conv reserves for a segment "
                "output; rename that tensor in the model"
            )


def _tensor_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    return names | {out for node in graph.node for out in node.output if out}


def _reachable_nodes(graph: onnx.GraphProto, input_name: str, wanted: Iterable[str]) -> list[onnx.NodeProto]:
    """The nodes needed to compute `wanted` from `input_name`, in the graph's order."""
    needed = set(wanted)
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(_node_reads(node))
    leaves = needed - {out for node in kept for out in node.output} - {input_name, ""}
    missing = sorted(leaves - {t.name for t in graph.initializer})
    if missing:
        raise ConversionError(
            f"the segment would need tensors that are neither the input {input_name!r} nor initialisers: "
            + ", ".join(repr(n) for n in missing)
        )
    return list(reversed(kept))


def _node_reads(node: onnx.NodeProto) -> set[str]:
    """Every name the node reads, including outer-scope names used by its subgraphs."""
    names = set(node.input)
    for attr in node.attribute:
        for subgraph in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
            names |= _outer_scope_reads(subgraph)
    return names


def _outer_scope_reads(graph: onnx.GraphProto) -> set[str]:
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    local |= {out for node in graph.node for out in node.output}
    reads = set().union(*(_node_reads(node) for node in graph.node)) if graph.node else set()
    return reads - local


def _used_initialisers(graph: onnx.GraphProto, nodes: Sequence[onnx.NodeProto]) -> list[onnx.TensorProto]:
    reads = set().union(*(_node_reads(node) for node in nodes)) if nodes else set()
    return [init for init in graph.initializer if init.name in reads]


def _export_nodes(output: SegmentOutput) -> list[onnx.NodeProto]:
    if output.pooling is not None:
        return pooling_nodes(output.source, output.name, output.pooling, output.elem_type)
    if output.elem_type == TensorProto.FLOAT:
        return [helper.make_node("Identity", [output.source], [output.name], name=f"{output.name}/Identity")]
    return [helper.make_node("Cast", [output.source], [output.name], name=f"{output.name}/Cast", to=TensorProto.FLOAT)]


def _input_info(graph: onnx.GraphProto, signature: InputSignature) -> onnx.ValueInfoProto:
    source = next(i for i in graph.input if i.name == signature.name)
    elem_type = source.type.tensor_type.elem_type
    return helper.make_tensor_value_info(signature.name, elem_type, [BATCH_DIM, *signature.shape])


def _make_model(source: onnx.ModelProto, graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=list(source.opset_import),
        functions=list(source.functions),
        producer_name=PRODUCER,
        producer_version=__version__,
    )
    model.ir_version = source.ir_version
    for node in model.graph.node:  # exporter debug info (torch stack traces) holds host paths; a device needs none of it
        del node.metadata_props[:]
    return model


def _check(segment: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(segment)
    except onnx.checker.ValidationError as e:
        message = " ".join(str(e).split())
        raise ConversionError(f"the cut frozen segment fails the ONNX checker: {message}") from e


def _check_batch_is_free(segment: onnx.ModelProto, outputs: Sequence[SegmentOutput]) -> None:
    """Shape inference with a symbolic input batch must not pin an output's batch size."""
    try:
        inferred = onnx.shape_inference.infer_shapes(segment)
    except onnx.shape_inference.InferenceError as e:
        log.debug("segment batch check skipped: shape inference failed: %s", e)
        return
    sources = {o.name: o.source for o in outputs}
    for value in inferred.graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            raise ConversionError(
                f"tensor {sources[value.name]!r} (segment output {value.name!r}) has a fixed batch size of "
                f"{dims[0].dim_value} even with a free input batch: the model pins the batch size (a Reshape to "
                "a constant shape?), but s2l runs batches of any size; re-export the model with a dynamic batch "
                "dimension (a -1 in the Reshape, or torch.onnx.export(..., dynamic_shapes=...))"
            )


def _warn_about_custom_ops(nodes: Sequence[onnx.NodeProto]) -> None:
    for node in nodes:
        if node.domain not in ONNXRUNTIME_DOMAINS:
            log.warning(
                "the frozen segment uses op %s::%s (node %r), which a stock onnxruntime does not implement; "
                "the device's backend must provide it",
                node.domain,
                node.op_type,
                node.name,
            )
