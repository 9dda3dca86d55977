"""The tuned model built on a TFLite frozen segment: per tap one FULLY_CONNECTED by the
merged adapter weight W_l (C x d_l) and an ADD onto the frozen logits, then the output
activation. What `s2conv export` writes when the bundle has no ONNX segment."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from s2rt.errors import ConversionError
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
    segment: bytes, taps: Sequence[str], logits: str, weights: Sequence[np.ndarray], activation: str | None, output_name: str
) -> bytes:
    """`segment` (a .tflite frozen segment with outputs `taps` and `logits`) with the adapters
    `weights` (one C x d_l per tap) merged in; one output, `output_name`. `activation`:
    None, "softmax" or "log_softmax"."""
    graph = read_graph(segment)
    outputs = {graph.tensors[i].name: i for i in graph.outputs}
    missing = [name for name in (*taps, logits) if name not in outputs]
    if missing:
        raise ConversionError(f"the TFLite segment has no output named {', '.join(repr(m) for m in missing)}")
    classes = int(weights[0].shape[0]) if weights else int(graph.tensors[outputs[logits]].shape[-1])
    total = outputs[logits]
    for index, (tap, weight) in enumerate(zip(taps, weights)):
        w = graph.constant(f"{PREFIX}.W.{index}", weight.astype(np.float32))
        b = graph.constant(f"{PREFIX}.b.{index}", np.zeros(classes, np.float32))
        delta = _batch_tensor(graph, f"{PREFIX}.delta.{index}", classes)
        fc = Options("FullyConnectedOptions", {"KeepNumDims": False})
        graph.add_operator(BuiltinOperator.FULLY_CONNECTED, [outputs[tap], w, b], [delta], fc)
        summed = _batch_tensor(graph, f"{PREFIX}.sum.{index}", classes)
        graph.add_operator(BuiltinOperator.ADD, [total, delta], [summed], Options("AddOptions"))
        total = summed
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
    return serialize(compact(graph))


def _batch_tensor(graph: Graph, name: str, width: int) -> int:
    return graph.add_tensor(Tensor(graph.unique_name(name), (1, width), np.dtype(np.float32), signature=(BATCH, width)))
