"""The tuned model built on a TFLite frozen segment: per tap one FULLY_CONNECTED by the
merged adapter weight W_l (C x d_l) and an ADD onto the frozen logits, then the output
activation. What `s2conv export` writes when the bundle has no ONNX segment. A nonlinear
head's branch (`s2rt.heads.branches`) is FULLY_CONNECTED per tap (the first with the
branch's bias), ADDs, RELU and a FULLY_CONNECTED to the logits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from s2rt.errors import ConversionError
from s2rt.heads.branches import Branch
from tflite.BuiltinOperator import BuiltinOperator

from s2conv.tflite.compact import compact
from s2conv.tflite.ir import Graph, Options, Tensor
from s2conv.tflite.layout import BATCH
from s2conv.tflite.read import read_graph
from s2conv.tflite.serialize import serialize

PREFIX = "s2l.tuned"
ACTIVATIONS = {
    "softmax": (BuiltinOperator.SOFTMAX, Options("SoftmaxOptions", {"Beta": 1.0})),
    "log_softmax": (BuiltinOperator.LOG_SOFTMAX, Options("LogSoftmaxOptions")),
}


def tuned_tflite(
    segment: bytes,
    taps: Sequence[str],
    logits: str,
    branches: Sequence[Branch],
    activation: str | None,
    output_name: str,
    metadata: Mapping[str, bytes] | None = None,
) -> bytes:
    """`segment` (a .tflite frozen segment with outputs `taps` and `logits`) with the head's
    `branches` merged in; one output, `output_name`. `activation`: None, "softmax" or "log_softmax".
    Branches wider than the frozen logits (a head with new classes) get the logits widened
    with zero columns first (FULLY_CONNECTED by [I | 0]). `metadata`: the Model's named buffers."""
    graph = read_graph(segment)
    outputs = {graph.tensors[i].name: i for i in graph.outputs}
    missing = [name for name in (*taps, logits) if name not in outputs]
    if missing:
        raise ConversionError(f"the TFLite segment has no output named {', '.join(repr(m) for m in missing)}")
    classes = int(graph.tensors[outputs[logits]].shape[-1])
    total = outputs[logits]
    width = max([classes, *(b.width if b.out is None else len(b.out) for b in branches)])
    if width > classes:
        total = _fully_connected(graph, total, np.eye(classes, width, dtype=np.float32).T, None, f"{PREFIX}.widen")
        classes = width
    for index, branch in enumerate(branches):
        tap_outputs = [outputs[tap] if w is not None else -1 for tap, w in zip(taps, branch.weights)]
        total = _add_branch(graph, branch, tap_outputs, total, index, classes)
    if activation is not None:
        opcode, options = ACTIVATIONS[activation]
        activated = _batch_tensor(graph, f"{PREFIX}.{activation}", classes)
        graph.add_operator(opcode, [total], [activated], options)
        total = activated
    for tensor in graph.tensors:
        if tensor.name == output_name:
            tensor.name = graph.unique_name(f"{output_name}/frozen")
    graph.tensors[total].name = output_name
    graph.outputs = [total]
    graph.metadata.update(metadata or {})
    return serialize(compact(graph))


def _fully_connected(graph: Graph, source: int, weight: np.ndarray, bias: np.ndarray | None, name: str) -> int:
    w = graph.constant(f"{name}.W", weight.astype(np.float32))
    b = graph.constant(f"{name}.b", np.zeros(len(weight), np.float32) if bias is None else bias.astype(np.float32))
    out = _batch_tensor(graph, name, len(weight))
    graph.add_operator(BuiltinOperator.FULLY_CONNECTED, [source, w, b], [out], Options("FullyConnectedOptions", {"KeepNumDims": False}))
    return out


def _add(graph: Graph, a: int, b: int, name: str, width: int) -> int:
    out = _batch_tensor(graph, name, width)
    graph.add_operator(BuiltinOperator.ADD, [a, b], [out], Options("AddOptions"))
    return out


def _add_branch(graph: Graph, branch: Branch, tap_outputs: list[int], total: int, index: int, classes: int) -> int:
    """A plain branch (skip2lora's tap: no bias, activation or output layer): FULLY_CONNECTED
    and ADD onto the logits; otherwise the FULLY_CONNECTEDs are summed first, then RELU and
    the output FULLY_CONNECTED."""
    plain = branch.bias is None and not branch.relu and branch.out is None
    name = f"{PREFIX}.delta.{index}" if plain else f"{PREFIX}.branch.{index}"
    summed = -1
    for t, (source, weight) in enumerate(zip(tap_outputs, branch.weights)):
        if weight is None:
            continue
        part = _fully_connected(graph, source, weight, branch.bias if summed < 0 else None, f"{name}.tap.{t}" if not plain else name)
        summed = part if summed < 0 else _add(graph, summed, part, f"{name}.sum.{t}", branch.width)
    if plain:
        return _add(graph, total, summed, f"{PREFIX}.sum.{index}", classes)
    if branch.relu:
        relu = _batch_tensor(graph, f"{name}.relu", branch.width)
        graph.add_operator(BuiltinOperator.RELU, [summed], [relu])
        summed = relu
    if branch.out is not None:
        summed = _fully_connected(graph, summed, branch.out, None, f"{name}.out")
    return _add(graph, total, summed, f"{name}.total", classes)


def _batch_tensor(graph: Graph, name: str, width: int) -> int:
    return graph.add_tensor(Tensor(graph.unique_name(name), (1, width), np.dtype(np.float32), signature=(BATCH, width)))
