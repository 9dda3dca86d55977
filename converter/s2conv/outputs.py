"""Which graph output holds the class scores, and what post-processing is ignored.

Exporters add outputs around the scores: skl2onnx classifiers output the predicted
label (ArgMax → ArrayFeatureExtractor → Cast, int64) and the probabilities, often as a
ZipMap (a list of {class: probability} maps, not a tensor). The scores are the float
tensor [batch, C] behind them: a ZipMap's input, an ArgMax's input, or a float output.
Everything else is post-processing the bundle does not need; each choice is reported
as a note, which `inspect` shows and `convert` logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx
from s2rt.errors import UnsupportedGraphError

from s2conv.graph import FLOAT_TYPES

ML_DOMAIN = "ai.onnx.ml"
OUTPUT_HINT = "choose the class scores with `--scores NAME`"
# Ops a label output is computed through, back to the ArgMax over the scores.
LABEL_OPS = frozenset({"Cast", "Reshape", "Squeeze", "Unsqueeze", "Identity", "ArrayFeatureExtractor", "Flatten"})
MAX_LABEL_STEPS = 16


@dataclass(frozen=True)
class ScoreOutput:
    tensor: str  # the class scores: a graph output or the tensor behind post-processing
    notes: tuple[str, ...] = ()


def select_output(graph: onnx.GraphProto, wanted: str | None = None) -> ScoreOutput:
    """The tensor holding the class scores. `wanted` names it (any float tensor of the
    graph); otherwise it is found from the graph outputs as described above.

    Raises `UnsupportedGraphError` naming the outputs when none or several hold scores.
    """
    producers = {out: node for node in graph.node for out in node.output if out}
    types = _elem_types(graph)
    if wanted is not None:
        return _wanted(graph, wanted, producers, types)
    candidates: dict[str, None] = {}
    notes: list[str] = []
    for output in graph.output:
        tensor, note = _scores_behind(output.name, producers, types)
        if note:
            notes.append(note)
        if tensor is not None:
            candidates[tensor] = None
    if len(candidates) == 1:
        return ScoreOutput(next(iter(candidates)), tuple(notes))
    names = ", ".join(repr(o.name) for o in graph.output)
    if not candidates:
        raise UnsupportedGraphError(f"none of the model's outputs ({names}) holds class scores as a float tensor [batch, C]; {OUTPUT_HINT}")
    found = ", ".join(repr(c) for c in candidates)
    raise UnsupportedGraphError(
        f"the model has {len(graph.output)} outputs ({names}) and {len(candidates)} of them hold float scores "
        f"({found}); s2l adapts one; {OUTPUT_HINT}"
    )


def _wanted(graph: onnx.GraphProto, wanted: str, producers: dict[str, onnx.NodeProto], types: dict[str, int]) -> ScoreOutput:
    known = {i.name for i in graph.input} | set(producers)
    if wanted not in known:
        outputs = ", ".join(repr(o.name) for o in graph.output)
        raise UnsupportedGraphError(f"--scores: no tensor named {wanted!r} in the model (its outputs: {outputs})")
    if types.get(wanted, onnx.TensorProto.FLOAT) not in FLOAT_TYPES:
        raise UnsupportedGraphError(f"--scores: {wanted!r} is not a float tensor; expected the class scores [batch, C]")
    ignored = [o.name for o in graph.output if o.name != wanted]
    notes = (f"outputs {', '.join(repr(n) for n in ignored)} ignored (--scores {wanted})",) if ignored else ()
    return ScoreOutput(wanted, notes)


def _scores_behind(name: str, producers: dict[str, onnx.NodeProto], types: dict[str, int]) -> tuple[str | None, str]:
    """(the score tensor an output is or stands for, a note on what was ignored)."""
    node = producers.get(name)
    if node is not None and node.op_type == "ZipMap" and node.domain == ML_DOMAIN:
        return node.input[0], f"output {name!r} is a ZipMap (a list of class → probability maps): used its input {node.input[0]!r}"
    elem_type = types.get(name, 0)
    if elem_type in FLOAT_TYPES:
        return name, ""
    argmax = _argmax_behind(name, producers)
    kind = onnx.helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.").lower() if elem_type else "non-tensor"
    if argmax is not None:
        return argmax.input[0], f"output {name!r} ({kind}, the predicted label via ArgMax) ignored: used the scores {argmax.input[0]!r}"
    return None, f"output {name!r} ({kind}) ignored: not class scores"


def _argmax_behind(name: str, producers: dict[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The ArgMax a label output is computed from, through label bookkeeping ops."""
    for _ in range(MAX_LABEL_STEPS):
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "ArgMax":
            return node
        if node.op_type not in LABEL_OPS:
            return None
        name = _data_input(node)
    return None


def _data_input(node: onnx.NodeProto) -> str:
    """ArrayFeatureExtractor(classes, indices) reads the indices second; other ops first."""
    inputs: Sequence[str] = node.input
    return inputs[1] if node.op_type == "ArrayFeatureExtractor" and len(inputs) > 1 else inputs[0]


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    return types
