"""Constant folding on the ONNX side: initialisers, Constant nodes and every node whose
inputs are all constants, evaluated with onnx's reference evaluator.

`fold_constants(..., batch=b)` also folds `Shape`/`Size` of data tensors whose sizes are
fixed but for the batch, taking the batch size to be b. The emitter uses this only to
work out the target shape of torch's `x.view(x.size(0), -1)` (Shape ▸ Gather ▸ Concat ▸
Reshape), never as a value in the TFLite graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from s2rt.errors import ConversionError

from s2conv.graph import OnnxNode

RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"})
Shape = tuple[int | None, ...]  # None: not a fixed size (the batch)


def fold_constants(
    model: onnx.ModelProto,
    nodes: Sequence[OnnxNode],
    batch: int | None = None,
    shapes: Mapping[str, Shape] | None = None,
) -> dict[str, np.ndarray]:
    """Every tensor whose value does not depend on the model input, by name."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    protos = list(model.graph.node)
    for node in nodes:
        inputs = [name for name in node.inputs if name]
        if batch is not None and shapes is not None and node.op in ("Shape", "Size") and inputs[0] not in values:
            known = _shape_with_batch(shapes.get(inputs[0]), batch)
            if known is not None:
                values[node.outputs[0]] = _shape_value(node, known)
            continue
        if node.op in RANDOM_OPS or node.has_subgraph or not all(name in values for name in inputs):
            continue
        results = _evaluate(model, protos[node.index], {name: values[name] for name in inputs}, node)
        values.update({name: value for name, value in zip(node.outputs, results) if name})
    return values


def _shape_with_batch(shape: Shape | None, batch: int) -> tuple[int, ...] | None:
    if shape is None or not shape or any(d is None for d in shape[1:]):
        return None
    return (batch, *(int(d) for d in shape[1:] if d is not None))


def _shape_value(node: OnnxNode, shape: tuple[int, ...]) -> np.ndarray:
    if node.op == "Size":
        return np.array(int(np.prod(shape)), np.int64)
    start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
    return np.array(shape[start : None if end is None else int(end)], np.int64)


def _evaluate(model: onnx.ModelProto, proto: onnx.NodeProto, feeds: dict[str, np.ndarray], node: OnnxNode) -> list[np.ndarray]:
    graph = helper.make_graph(
        [proto],
        "fold",
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape) for name, value in feeds.items()],
        [helper.make_empty_tensor_value_info(name) for name in proto.output if name],
    )
    single = helper.make_model(graph, opset_imports=list(model.opset_import), functions=list(model.functions))
    single.ir_version = model.ir_version
    try:
        return [np.asarray(r) for r in ReferenceEvaluator(single).run(None, feeds)]
    except Exception as e:  # the reference evaluator raises whatever its op implementation raises
        raise ConversionError(f"{node.label}: cannot evaluate it on its constant inputs: {e}") from e
