"""The frozen segment must compute each sample on its own: s2l runs batches of any size
and the Skip-Cache stores every sample's outputs.

After the cut the segment runs in onnxruntime on a batch of `CHECK_BATCH` random samples
and on each sample alone; every output must have one row per sample, and the rows must
agree. That catches a batch size the model still pins (a fixed export batch s2conv could
not free, a constant sized like the batch) and a node that mixes the samples: Softmax
over axis 0, a Flatten or Reshape across the batch, a Concat along it, MaxPool's Indices
(which count across the batch). On failure the segment runs once more with every
intermediate tensor as an output, so that the message can name the first node at fault.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper
from s2rt.errors import ConversionError

from s2conv.graph import node_view

log = logging.getLogger(__name__)

CHECK_BATCH = 3
PINNED = (
    "the model was exported with a fixed batch size and s2conv could not free it in the frozen segment "
    "(s2l runs batches of any size); re-export it with a dynamic batch dimension "
    "(torch.onnx.export(..., dynamic_shapes=...) or dynamic_axes=...)"
)
MIXED = "the frozen segment does not compute each sample on its own (s2l runs batches of any size and caches each sample's outputs)"


def check_batches_agree(
    segment: onnx.ModelProto,
    input_name: str,
    sample_shape: Sequence[int],
    elem_type: int,
    exported_batch: int | None = None,
    sources: Mapping[str, str] | None = None,
) -> None:
    """Raise `ConversionError` if the segment's outputs for a batch are not its outputs for
    each sample alone; `exported_batch` is the model's fixed batch size if it had one (the
    message then says how to re-export), `sources` the source tensor of each output name."""
    session = _session(segment, logging.WARNING if exported_batch is not None else logging.DEBUG)
    if session is None:
        return
    x = _random_batch(sample_shape, elem_type)
    headline = PINNED if exported_batch is not None else MIXED
    try:
        problems = _problems(session, input_name, x)
    except _RunFailed as e:
        raise ConversionError(f"{headline}: onnxruntime fails on a batch of {len(x)}: {e}") from None
    if not problems:
        return
    name, problem = next(iter(problems.items()))
    shown = f"output {name!r} (tensor {sources[name]!r})" if sources and name in sources else f"output {name!r}"
    culprit = _first_node_at_fault(segment, input_name, x)
    raise ConversionError(f"{headline}: {culprit + ', and ' if culprit else ''}{shown} {problem}")


class _RunFailed(Exception):
    """onnxruntime could not run the segment on the batch; the message is its own."""


def _session(model: onnx.ModelProto, level: int = logging.DEBUG) -> Any:
    """An onnxruntime session, or None (logged at `level`: a freed export batch left unchecked
    is worth a warning; a custom op the host lacks already has its own)."""
    import onnxruntime as ort  # the converter's own dependency via s2rt; imported late, it is slow

    options = ort.SessionOptions()
    options.log_severity_level = 4
    state = ort.capi.onnxruntime_pybind11_state
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except (state.Fail, state.InvalidGraph, state.NotImplemented) as e:  # e.g. a custom op the host lacks
        log.log(level, "could not check in onnxruntime that the frozen segment keeps samples apart: %s", " ".join(str(e).split()))
        return None


def _problems(session: Any, input_name: str, x: np.ndarray) -> dict[str, str]:
    """What is wrong with each output that is not one row per sample, equal to the sample alone."""
    import onnxruntime as ort

    state = ort.capi.onnxruntime_pybind11_state
    names = [o.name for o in session.get_outputs()]
    try:
        alone = [session.run(names, {input_name: x[i : i + 1]}) for i in range(len(x))]
        together = session.run(names, {input_name: x})
    except (state.Fail, state.RuntimeException, state.InvalidArgument) as e:
        raise _RunFailed(" ".join(str(e).split())[:300]) from None
    problems = {}
    for k, name in enumerate(names):
        rows = [len(outputs[k]) if np.ndim(outputs[k]) else 0 for outputs in (together, *alone)]
        if rows != [len(x)] + [1] * len(x):
            problems[name] = f"has {rows[0]} rows for a batch of {len(x)} samples and {rows[1]} for one; expected one row per sample"
            continue
        each = np.concatenate([outputs[k] for outputs in alone])
        if together[k].shape != each.shape or not np.allclose(together[k], each, rtol=1e-4, atol=_atol(each), equal_nan=True):
            problems[name] = f"differs between a batch of {len(x)} and one sample at a time"
    return problems


def _atol(values: np.ndarray) -> float:
    """1e-5 of the output's largest finite magnitude (at least 1e-5): another batch size may
    take another kernel, whose rounding scales with the values summed, not with each result."""
    if not np.issubdtype(values.dtype, np.floating):
        return 0.0
    finite = np.abs(values[np.isfinite(values)])
    return 1e-5 * max(1.0, float(finite.max()) if finite.size else 1.0)


def _first_node_at_fault(segment: onnx.ModelProto, input_name: str, x: np.ndarray) -> str:
    """'node ... (Op) mixes the samples' for the first node whose output fails the check, or ''."""
    try:
        inferred = onnx.shape_inference.infer_shapes(segment)
    except onnx.shape_inference.InferenceError:
        return ""
    typed = {v.name: v for v in inferred.graph.value_info if v.type.HasField("tensor_type")}
    probe = onnx.ModelProto()
    probe.CopyFrom(inferred)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(typed[n] for node in probe.graph.node for n in node.output if n in typed and n not in present)
    session = _session(probe)
    if session is None:
        return ""
    try:
        problems = _problems(session, input_name, x)
    except _RunFailed:
        return ""
    for index, node in enumerate(segment.graph.node):
        if any(name in problems for name in node.output):
            return f"{node_view(index, node).label} mixes the samples of a batch or pins its size"
    return ""


def _random_batch(sample_shape: Sequence[int], elem_type: int) -> np.ndarray:
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.floating):
        return rng.normal(size=(CHECK_BATCH, *sample_shape)).astype(dtype)
    return rng.integers(0, 2, size=(CHECK_BATCH, *sample_shape)).astype(dtype)
