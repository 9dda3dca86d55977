"""Models exported with a fixed batch size get a frozen segment with a free batch.

torch without `dynamic_axes`/`dynamic_shapes`, or a TensorFlow model saved for batch 1,
declares its input as [1, ...]. The segment's input is always declared [batch, ...];
what can still pin the batch is a constant target shape: a Reshape to [1, 64] (torch's
`x.view(1, -1)`, and `flatten` under the dynamo exporter with static shapes). Its
leading size becomes 0, ONNX's "copy this dimension from the input", when the Reshape's
data input has the fixed batch as its leading dimension (or -1 when the node sets
`allowzero`). After the cut, the segment is run once on a batch of several random
samples and on each sample alone, and the results must agree.

The other choice, running a pinned segment one sample at a time on the device, would
make every backend slower and keep a quirk of the export in the bundle.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from s2rt.errors import ConversionError

log = logging.getLogger(__name__)

CHECK_BATCH = 3
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


def check_batches_agree(segment: onnx.ModelProto, input_name: str, sample_shape: Sequence[int], elem_type: int) -> None:
    """Run the segment on a batch of `CHECK_BATCH` random samples and on each alone; raise
    `ConversionError` if any output differs (the batch is still pinned or samples mix)."""
    import onnxruntime as ort  # the converter's own dependency via s2rt; imported late, it is slow

    state = ort.capi.onnxruntime_pybind11_state
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(segment.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except (state.Fail, state.InvalidGraph, state.NotImplemented) as e:  # e.g. a custom op the host lacks
        log.warning("could not check the frozen segment's free batch in onnxruntime: %s", " ".join(str(e).split()))
        return
    x = _random_batch(sample_shape, elem_type)
    names = [o.name for o in session.get_outputs()]
    try:
        alone = [session.run(names, {input_name: x[i : i + 1]}) for i in range(len(x))]
        together = session.run(names, {input_name: x})
    except (state.Fail, state.RuntimeException, state.InvalidArgument) as e:
        message = " ".join(str(e).split())
        raise ConversionError(f"{_PINNED}: onnxruntime fails on a batch of {CHECK_BATCH}: {message[:300]}") from None
    for k, name in enumerate(names):
        each = np.concatenate([outputs[k] for outputs in alone])
        if together[k].shape != each.shape or not np.allclose(together[k], each, rtol=1e-4, atol=1e-5):
            raise ConversionError(f"{_PINNED}: output {name!r} differs between a batch of {CHECK_BATCH} and one sample at a time")


_PINNED = (
    "the model was exported with a fixed batch size and s2conv could not free it in the frozen segment "
    "(s2l runs batches of any size); re-export it with a dynamic batch dimension "
    "(torch.onnx.export(..., dynamic_shapes=...) or dynamic_axes=...)"
)


def _random_batch(sample_shape: Sequence[int], elem_type: int) -> np.ndarray:
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.floating):
        return rng.normal(size=(CHECK_BATCH, *sample_shape)).astype(dtype)
    return rng.integers(0, 2, size=(CHECK_BATCH, *sample_shape)).astype(dtype)
