"""The frozen segment must compute each sample's outputs from that sample alone, the same on every run.

The Skip-Cache stores a sample's taps and frozen logits the first time it sees the sample
and reuses them in every later epoch; predictions run the same segment. A node that draws
random numbers (Dropout in training mode, the Random* ops, Bernoulli, Multinomial) would
make the cached values one random draw among many, cached and uncached training disagree,
and two predictions of one input differ. A BatchNormalization in training mode normalises
with the statistics of the whole batch, so a sample's outputs depend on the samples beside it.

s2conv refuses such a segment rather than rewriting the node to its inference form: that
would silently compute another model than the one given, and the usual cause is an export
in training mode (torch's `model.train()` or `training=TrainingMode.TRAINING`), fixed at
the export. A training-mode Dropout with ratio 0 drops nothing and is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from s2rt.errors import UnsupportedGraphError

from s2conv.graph import DEFAULT_DOMAINS, node_view

RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"})
EXPORT_HINT = "export the model in inference mode (model.eval() before torch.onnx.export)"
DEFAULT_DROPOUT_RATIO = 0.5


def dropout_problem(ratio: float, training_mode: bool) -> str | None:
    """Why a Dropout with these (constant) inputs cannot be in a frozen segment, or None if it can."""
    if not training_mode or ratio == 0.0:
        return None
    return (
        f"training_mode is true, so it zeroes a random {ratio:g} of its input on every run; a frozen segment must give "
        f"the same outputs for the same input (the Skip-Cache stores them once): {EXPORT_HINT}, or set training_mode to false"
    )


def check_deterministic(graph: onnx.GraphProto, kept: Sequence[onnx.NodeProto]) -> None:
    """Raise `UnsupportedGraphError` naming the first node of `kept` (nodes of `graph`) that is
    random or mixes the samples of a batch."""
    outputs = {name for node in kept for name in node.output if name}
    constants = _constants(graph)
    for index, proto in enumerate(graph.node):
        if proto.domain not in DEFAULT_DOMAINS or not outputs.intersection(proto.output):
            continue
        node = node_view(index, proto)
        problem = _problem(node.op, node.inputs, node.attrs, constants)
        if problem is not None:
            raise UnsupportedGraphError(f"{node.label} cannot be part of the frozen segment: {problem}")


def _problem(op: str, inputs: Sequence[str], attrs: Mapping[str, object], constants: Mapping[str, np.ndarray]) -> str | None:
    if op in RANDOM_OPS:
        return f"{op} draws random numbers on every run, and a frozen segment must give the same outputs for the same input"
    if op == "BatchNormalization" and attrs.get("training_mode", 0):
        return f"training_mode=1 normalises with the statistics of each batch, which mixes the samples of a batch; {EXPORT_HINT}"
    if op == "Dropout":
        return _dropout(inputs, constants)
    return None


def _dropout(inputs: Sequence[str], constants: Mapping[str, np.ndarray]) -> str | None:
    """Since opset 12 ratio and training_mode are inputs 1 and 2; from opset 7 to 11 Dropout is the
    identity at inference (onnxruntime runs no older opset)."""
    training_name = inputs[2] if len(inputs) > 2 else ""
    if not training_name:
        return None
    if training_name not in constants:
        return f"its training_mode {training_name!r} is computed, not a constant, so it may drop values at random; {EXPORT_HINT}"
    ratio_name = inputs[1] if len(inputs) > 1 else ""
    if ratio_name and ratio_name not in constants:
        return f"its ratio {ratio_name!r} is computed, not a constant, and training_mode may be true; {EXPORT_HINT}"
    ratio = float(constants[ratio_name].reshape(-1)[0]) if ratio_name else DEFAULT_DROPOUT_RATIO
    return dropout_problem(ratio, bool(constants[training_name].reshape(-1)[0]))


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initialisers and the outputs of Constant nodes that hold a tensor."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values
