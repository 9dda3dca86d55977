"""Give computed Reshape targets a constant shape: torch's `x.view(x.size(0), -1)` becomes
a Reshape to the constant [-1, d1, ...], so shape inference knows every size after it.

The target is evaluated for two batch sizes; it is pinned only if it comes out as
(batch, fixed sizes ...) both times.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from s2conv.graph import OnnxNode
from s2conv.tflite.constants import Shape, fold_constants

PROBE_BATCHES = (9973, 7919)  # two primes no real size is likely to equal


def pin_computed_reshapes(model: onnx.ModelProto, nodes: Sequence[OnnxNode], shapes: Mapping[str, Shape]) -> onnx.ModelProto | None:
    """A copy of the (shape-inferred) `model` with constant Reshape targets, or None if
    there is nothing to pin."""
    initialisers = {i.name for i in model.graph.initializer}
    targets = [
        n for n in nodes if n.op == "Reshape" and n.inputs[1] not in initialisers and not _fixed_but_batch(shapes.get(n.outputs[0]))
    ]
    if not targets:
        return None
    probes = [fold_constants(model, nodes, batch=b, shapes=shapes) for b in PROBE_BATCHES]
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    changed = False
    for node in targets:
        resolved = [_resolve(values.get(node.inputs[1]), shapes.get(node.inputs[0]), b) for values, b in zip(probes, PROBE_BATCHES)]
        first, second = resolved
        if first is None or second is None or first[0] != PROBE_BATCHES[0] or second[0] != PROBE_BATCHES[1] or first[1:] != second[1:]:
            continue
        name = f"{node.outputs[0]}/s2l_shape"
        pinned.graph.initializer.append(numpy_helper.from_array(np.array([-1, *first[1:]], np.int64), name))
        pinned.graph.node[node.index].input[1] = name
        changed = True
    return pinned if changed else None


def _fixed_but_batch(shape: Shape | None) -> bool:
    return shape is not None and len(shape) > 0 and all(d is not None for d in shape[1:])


def _resolve(target: np.ndarray | None, input_shape: Shape | None, batch: int) -> tuple[int, ...] | None:
    """ONNX Reshape's target with 0 (copy) and -1 (infer) resolved, or None."""
    if target is None or not _fixed_but_batch(input_shape) or input_shape is None:
        return None
    source = (batch, *(int(d) for d in input_shape[1:] if d is not None))
    dims = [source[i] if d == 0 and i < len(source) else int(d) for i, d in enumerate(target.reshape(-1))]
    if dims.count(-1) > 1:
        return None
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1]))
        if known == 0 or int(np.prod(source)) % known:
            return None
        dims[dims.index(-1)] = int(np.prod(source)) // known
    return tuple(dims)
