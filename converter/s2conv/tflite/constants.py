"""Constant folding on the ONNX side: initialisers, Constant nodes and every node whose
inputs are all constants, evaluated with onnx's reference evaluator."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from s2rt.errors import ConversionError

from s2conv.graph import OnnxNode

RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"})


def fold_constants(model: onnx.ModelProto, nodes: Sequence[OnnxNode]) -> dict[str, np.ndarray]:
    """Every tensor whose value does not depend on the model input, by name."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    protos = list(model.graph.node)
    for node in nodes:
        inputs = [name for name in node.inputs if name]
        if node.op in RANDOM_OPS or node.has_subgraph or not all(name in values for name in inputs):
            continue
        results = _evaluate(model, protos[node.index], {name: values[name] for name in inputs}, node)
        values.update({name: value for name, value in zip(node.outputs, results) if name})
    return values


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
