"""Shrink a finished TFLite graph without changing what it computes, just before it is
serialised: what no interpreter reads goes.

- **Shared constants.** Constants with the same type, shape, bytes and quantization become
  one tensor (every tap's pooling axes and reshape target, a PAD's paddings repeat).
- **Unused tensors dropped** (the float weights that int8 ones replaced), the rest renumbered.
- **Names only where they are looked up.** The input and every output keep their names:
  the runtime finds tensors by them. Internal tensors are written without one; LiteRT and
  tflite_runtime read a missing name as "" and identify tensors by index in their errors.
  The names stay in the graph `onnx_to_graph` returns, for debugging.

Not cut, because LiteRT reads them: the int32 biases' QuantizationParameters of int8
FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D (its builtin kernels ignore them, but the
XNNPACK delegate that LiteRT applies by default refuses an int32 bias without them, and
the op then runs on the builtin kernel with different rounding), and the per-channel int64
zero points (the model loader rejects a scale count that differs from the zero point count).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from s2conv.tflite.ir import Graph, Tensor

UNNAMED = ""  # serialised without a name field


def compact(graph: Graph) -> Graph:
    """`graph` with identical constants shared, unused tensors dropped and internal names
    removed; computes exactly what `graph` does (changed in place and returned)."""
    share_constants(graph)
    drop_unused_tensors(graph)
    strip_internal_names(graph)
    return graph


def share_constants(graph: Graph) -> Graph:
    """Point every reader of a constant at the first constant equal to it."""
    produced = {i for op in graph.operators for i in op.outputs}
    boundary = set(graph.inputs) | set(graph.outputs) | produced
    first: dict[tuple[object, ...], int] = {}
    same: dict[int, int] = {}
    for index, tensor in enumerate(graph.tensors):
        if tensor.data is None or index in boundary:
            continue
        same[index] = first.setdefault(_constant_key(tensor), index)
    for op in graph.operators:
        op.inputs = [same.get(i, i) for i in op.inputs]
    return graph


def drop_unused_tensors(graph: Graph) -> Graph:
    """Drop tensors no operator reads or writes and that are neither input nor output; renumber."""
    used = sorted({i for op in graph.operators for i in (*op.inputs, *op.outputs) if i >= 0} | set(graph.inputs) | set(graph.outputs))
    new_index = {old: new for new, old in enumerate(used)}

    def renumber(indices: list[int]) -> list[int]:
        return [new_index[i] if i >= 0 else i for i in indices]

    graph.tensors = [graph.tensors[i] for i in used]
    graph.operators = [replace(op, inputs=renumber(op.inputs), outputs=renumber(op.outputs)) for op in graph.operators]
    graph.inputs, graph.outputs = renumber(graph.inputs), renumber(graph.outputs)
    return graph


def strip_internal_names(graph: Graph) -> Graph:
    """Remove the name of every tensor but the graph's inputs and outputs."""
    named = set(graph.inputs) | set(graph.outputs)
    for index, tensor in enumerate(graph.tensors):
        if index not in named:
            tensor.name = UNNAMED
    return graph


def _constant_key(tensor: Tensor) -> tuple[object, ...]:
    assert tensor.data is not None
    data = np.ascontiguousarray(tensor.data, dtype=tensor.dtype).tobytes()
    return (tensor.dtype.str, tensor.shape, data, tensor.quantization)
