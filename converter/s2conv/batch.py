"""Models exported with a fixed batch size get a frozen segment with a free batch.

torch without `dynamic_axes`/`dynamic_shapes`, or a TensorFlow model saved for batch 1,
declares its input as [1, ...]. The segment's input is always declared [batch, ...];
what can still pin the batch is a constant target shape: a Reshape to [1, 64] (torch's
`x.view(1, -1)`, and `flatten` under the dynamo exporter with static shapes). Its
leading size becomes 0, ONNX's "copy this dimension from the input", when the Reshape's
data input has the fixed batch as its leading dimension (or -1 when the node sets
`allowzero`). After the cut, the segment is run on a batch and on each sample alone, and
the results must agree (`per_sample.py`).

The other choice, running a pinned segment one sample at a time on the device, would
make every backend slower and keep a quirk of the export in the bundle.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

log = logging.getLogger(__name__)

SUFFIX = "/s2l_free_batch"


def fixed_batch(graph: onnx.GraphProto, input_name: str) -> int | None:
    """The input's batch size if the model fixes it, else None."""
    info = next(i for i in graph.input if i.name == input_name)
    dims = info.type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") else None


def free_batch(graph: onnx.GraphProto, nodes: Sequence[onnx.NodeProto], batch: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """`nodes` with every Reshape whose constant target shape starts with the fixed
    `batch` rewritten to copy the batch from its input; and the new shape initialisers."""
    constants = _constant_arrays(graph, nodes)
    leading = _leading_dims(graph)
    out: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    for node in nodes:
        shape = constants.get(node.input[1]) if node.op_type == "Reshape" and len(node.input) > 1 else None
        new_shape = _free_shape(node, shape, batch, leading.get(node.input[0]))
        if new_shape is None:
            out.append(node)
            continue
        name = f"{node.input[1]}{SUFFIX}{len(added)}"
        added.append(numpy_helper.from_array(new_shape, name))
        rewritten = onnx.NodeProto()
        rewritten.CopyFrom(node)
        rewritten.input[1] = name
        out.append(rewritten)
        log.info(
            "%s: target shape %s -> %s (free batch)", node.name or node.op_type, shape.tolist() if shape is not None else None, new_shape
        )
    return out, added


def _free_shape(node: onnx.NodeProto, shape: np.ndarray | None, batch: int, input_leading: int | None) -> np.ndarray | None:
    if shape is None or shape.ndim != 1 or not len(shape) or int(shape[0]) != batch or input_leading != batch:
        return None
    allow_zero = any(a.name == "allowzero" and a.i for a in node.attribute)
    new = shape.astype(np.int64).copy()
    if not allow_zero:
        new[0] = 0
    elif -1 not in new.tolist():
        new[0] = -1
    else:
        return None
    return new


def _constant_arrays(graph: onnx.GraphProto, nodes: Sequence[onnx.NodeProto]) -> dict[str, np.ndarray]:
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer if init.data_type == TensorProto.INT64}
    for node in nodes:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.INT64:
                    arrays[node.output[0]] = numpy_helper.to_array(attr.t)
                elif attr.name == "value_ints":
                    arrays[node.output[0]] = np.array(attr.ints, dtype=np.int64)
    return arrays


def _leading_dims(graph: onnx.GraphProto) -> dict[str, int]:
    """The fixed leading dimension of every tensor whose (inferred) shape says it."""
    dims = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        shape = info.type.tensor_type.shape.dim if info.type.HasField("tensor_type") else ()
        if shape and shape[0].HasField("dim_value"):
            dims[info.name] = int(shape[0].dim_value)
    return dims
