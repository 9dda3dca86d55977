"""Predictions in one onnxruntime call: the frozen segment with the adapters inside the graph.

Every head that is affine in the fused tap row X (Skip2-LoRA and the last-layer methods)
folds into one D x C weight W and a C bias b:  z = F + X W + b. The predict graph is the
frozen segment plus

    [Sub, Div]  (the input normalisation, when the bundle has one)
    Flatten per conv tap, Concat -> X      Gemm(X, W, b) + F -> logits
    Softmax -> probabilities, ArgMax -> class   (classification heads)

with W and b as graph *inputs*: a new adapter version is two new arrays, not a new
session, and a daemon swaps them atomically with the rest of what it serves. The segment
is extended at the protobuf level (`onnx_proto`), so the device needs no onnx package.

When the segment's logits come from a float Gemm of the last tap, F = h W_L + b_L with h
the last tap, so F + X W + b = X W' + b' with W' = W plus W_L on h's rows and b' = b + b_L:
that Gemm is replaced by Gemm(X, W', b') and the Add goes (`LastLayer`; `PredictGraph`
binds W' and b', made from W and b when they change).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from s2rt.backend import onnx_proto as pb
from s2rt.bundle.model import Bundle, Loss, Segment
from s2rt.errors import BackendError

WEIGHT = "s2l.predict.weight"  # D x C
BIAS = "s2l.predict.bias"  # C
LOGITS = "s2l.predict.logits"
PROBABILITIES = "s2l.predict.probabilities"
CLASSES = "s2l.predict.classes"
RAW_INPUT = "s2l.predict.input"  # the graph input when the bundle normalises inputs
_MEAN, _STD = "s2l.predict.mean", "s2l.predict.std"
# Set to 1 to predict with the frozen segment and the head in NumPy (the path before the
# predict graph): for comparing the two in the benchmark, or to rule the graph out.
DISABLE_ENV = "S2RT_NO_PREDICT_GRAPH"


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "") in ("", "0")


@dataclass(frozen=True)
class LastLayer:
    """The segment's logits layer, Gemm(last tap, B, C), that the predict graph folds W's last block into."""

    node: bytes  # the GRAPH_NODE field, as encoded, that the predict graph leaves out
    weight: np.ndarray  # K x C: B, transposed when the Gemm has transB
    bias: np.ndarray  # C
    rows: slice  # the last tap's rows of the fused tap row X

    def fold(self, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(W', b') that the predict graph binds for the head's fold (W, b)."""
        merged = np.array(weight, np.float32, order="C")
        merged[self.rows] += self.weight
        return merged, np.ascontiguousarray(bias + self.bias, np.float32)


def predict_model(bundle: Bundle, segment: Segment) -> bytes:
    """The segment's ONNX model extended into the predict graph (raises BackendError on a malformed segment)."""
    return _build(bundle, segment)[0]


def _build(bundle: Bundle, segment: Segment) -> tuple[bytes, LastLayer | None]:
    model = pb.fields(bytes(segment.model))
    graph_field = pb.first(model, pb.MODEL_GRAPH)
    if graph_field is None:
        raise BackendError("the frozen segment is not a valid ONNX model: it has no graph")
    graph = pb.fields(pb.payload(graph_field))
    outputs = {pb.value_name(pb.payload(f)): pb.payload(f) for f in graph if f.number == pb.GRAPH_OUTPUT}
    for name in [*(t.name for t in bundle.taps), segment.logits_output]:
        if name not in outputs:
            raise BackendError(f"the frozen segment has no output named {name!r}")
        if pb.elem_type(outputs[name]) != pb.FLOAT:
            raise BackendError(f"the frozen segment's output {name!r} is not float32; the predict graph needs float32 taps and logits")

    last = last_layer(bundle, segment, graph)
    dropped = b"" if last is None else last.node
    kept = [f.raw for f in graph if f.number not in (pb.GRAPH_INPUT, pb.GRAPH_OUTPUT) and f.raw != dropped]
    inputs = [pb.payload(f) for f in graph if f.number == pb.GRAPH_INPUT]
    graph_inputs, normalise = _inputs(bundle, segment, inputs)
    # the normalisation nodes come first and the head's last, so that nodes stay in topological order
    logits_rank = pb.rank(outputs[segment.logits_output])
    head = _head_nodes(bundle, segment, flatten_logits=logits_rank != 2, folded=last is not None) + _head_io(bundle)
    new_graph = normalise + b"".join(kept) + graph_inputs + head
    rest = b"".join(f.raw for f in model if f.number != pb.MODEL_GRAPH)
    return rest + pb.message(pb.MODEL_GRAPH, new_graph), last


def last_layer(bundle: Bundle, segment: Segment, graph: Sequence[pb.Field]) -> LastLayer | None:
    """The segment's logits layer when it is a plain float Gemm of the last tap with stored B and C, else None."""
    tap = bundle.taps[-1]
    classes = bundle.head.num_outputs
    nodes = [(f.raw, pb.payload(f)) for f in graph if f.number == pb.GRAPH_NODE]
    makers = [(raw, body) for raw, body in nodes if segment.logits_output in pb.strings(body, pb.NODE_OUTPUT)]
    readers = [body for _, body in nodes if segment.logits_output in pb.strings(body, pb.NODE_INPUT)]
    if len(makers) != 1 or readers or len(tap.shape) != 1:
        return None
    raw, body = makers[0]
    op = pb.first(pb.fields(body), pb.NODE_OP_TYPE)
    args = pb.strings(body, pb.NODE_INPUT)
    if op is None or pb.payload(op) != b"Gemm" or len(args) != 3 or args[0] not in _names_of(tap.name, nodes):
        return None
    attributes = pb.attributes(body)
    defaults = {"transA": 0, "transB": 0, "alpha": 1.0, "beta": 1.0}
    if any(name not in defaults or (name != "transB" and value != defaults[name]) for name, value in attributes.items()):
        return None
    stored = dict(t for t in (pb.float_tensor(pb.payload(f)) for f in graph if f.number == pb.GRAPH_INITIALIZER) if t is not None)
    weight, bias = stored.get(args[1]), stored.get(args[2])
    if weight is None or bias is None or bias.shape not in ((classes,), (1, classes)):
        return None
    if attributes.get("transB", 0) == 1:
        weight = weight.T
    elif attributes.get("transB", 0) != 0:
        return None
    if weight.shape != (tap.size, classes):
        return None
    start = sum(t.size for t in bundle.taps[:-1])
    return LastLayer(raw, np.ascontiguousarray(weight), bias.reshape(classes).copy(), slice(start, start + tap.size))


def _inputs(bundle: Bundle, segment: Segment, inputs: Sequence[bytes]) -> tuple[bytes, bytes]:
    """(the graph inputs, the nodes before the segment): with normalisation, a raw input and
    the Sub/Div that feed the segment's input."""
    signature = bundle.input
    if signature.mean is None or signature.std is None:
        return b"".join(pb.message(pb.GRAPH_INPUT, i) for i in inputs), b""
    graph_inputs = b""
    for value in inputs:
        if pb.value_name(value) == segment.input_name:
            graph_inputs += pb.renamed_value_info(pb.GRAPH_INPUT, value, RAW_INPUT)
        else:
            graph_inputs += pb.message(pb.GRAPH_INPUT, value)
    graph_inputs += pb.float_initializer(_MEAN, signature.mean) + pb.float_initializer(_STD, signature.std)
    nodes = pb.node("Sub", [RAW_INPUT, _MEAN], ["s2l.predict.centred"])
    nodes += pb.node("Div", ["s2l.predict.centred", _STD], [segment.input_name])
    return graph_inputs, nodes


def _names_of(tap: str, nodes: Sequence[tuple[bytes, bytes]]) -> set[str]:
    """The tap's name and, when an Identity makes the tap, its source's name (the same values)."""
    names = {tap}
    for _, body in nodes:
        op = pb.first(pb.fields(body), pb.NODE_OP_TYPE)
        if op is not None and pb.payload(op) == b"Identity" and pb.strings(body, pb.NODE_OUTPUT) == [tap]:
            names.update(pb.strings(body, pb.NODE_INPUT))
    return names


def _head_nodes(bundle: Bundle, segment: Segment, flatten_logits: bool, folded: bool) -> bytes:
    out, columns = b"", []
    for i, tap in enumerate(bundle.taps):
        if len(tap.shape) == 1:
            columns.append(tap.name)
        else:
            out += pb.node("Flatten", [tap.name], [f"s2l.predict.tap{i}"], axis=1)
            columns.append(f"s2l.predict.tap{i}")
    fused = columns[0]
    if len(columns) > 1:
        fused = "s2l.predict.x"
        out += pb.node("Concat", columns, [fused], axis=1)
    if folded:  # the segment's logits layer is left out: its weight is in W
        out += pb.node("Gemm", [fused, WEIGHT, BIAS], [LOGITS])
    else:
        out += pb.node("Gemm", [fused, WEIGHT, BIAS], ["s2l.predict.delta"])
        frozen = segment.logits_output
        if flatten_logits:
            out += pb.node("Flatten", [frozen], ["s2l.predict.frozen"], axis=1)
            frozen = "s2l.predict.frozen"
        out += pb.node("Add", [frozen, "s2l.predict.delta"], [LOGITS])
    if bundle.head.loss == Loss.SOFTMAX_CROSS_ENTROPY:
        out += pb.node("Softmax", [LOGITS], [PROBABILITIES], axis=1)
        out += pb.node("ArgMax", [LOGITS], [CLASSES], axis=1, keepdims=0)
    return out


def _head_io(bundle: Bundle) -> bytes:
    width = sum(t.size for t in bundle.taps)
    classes = bundle.head.num_outputs
    out = pb.value_info(pb.GRAPH_INPUT, WEIGHT, pb.FLOAT, [width, classes])
    out += pb.value_info(pb.GRAPH_INPUT, BIAS, pb.FLOAT, [classes])
    out += pb.value_info(pb.GRAPH_OUTPUT, LOGITS, pb.FLOAT, ["N", classes])
    if bundle.head.loss == Loss.SOFTMAX_CROSS_ENTROPY:
        out += pb.value_info(pb.GRAPH_OUTPUT, PROBABILITIES, pb.FLOAT, ["N", classes])
        out += pb.value_info(pb.GRAPH_OUTPUT, CLASSES, pb.INT64, ["N"])
    return out


class PredictGraph:
    """An onnxruntime session of the predict graph; `run` is one call per batch.

    The weight and bias stay bound (IO binding) while the same arrays are passed, so a call
    binds only the input. A binding is per thread: the daemon predicts from several.
    """

    def __init__(self, bundle: Bundle, segment: Segment, threads: int = 1) -> None:
        import onnxruntime as ort

        from s2rt.backend.onnx import needs_exact_u8s8, session_options

        options = session_options(threads, needs_exact_u8s8(bundle))
        model, self.last_layer = _build(bundle, segment)
        try:
            self.session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
        except BackendError:
            raise
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise BackendError(f"onnxruntime cannot load the predict graph: {e}") from None
        normalised = bundle.input.mean is not None and bundle.input.std is not None
        self.input_name = RAW_INPUT if normalised else segment.input_name
        self._local = threading.local()

    def run(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, outputs: Sequence[str]) -> list[np.ndarray]:
        """`outputs` of the graph for a contiguous batch `x` of the input dtype."""
        try:
            binding = self._binding(weight, bias, tuple(outputs), len(x))
            binding.bind_cpu_input(self.input_name, x)
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise BackendError(f"onnxruntime failed to run the predict graph: {e}") from None

    def _binding(self, weight: np.ndarray, bias: np.ndarray, outputs: tuple[str, ...], rows: int) -> Any:
        """This thread's binding for `outputs`, bound to `weight` and `bias` (one per set of outputs,
        so that callers asking for logits and for classes in turn do not rebuild it every call)."""
        bindings: dict[tuple[str, ...], list[Any]] | None = getattr(self._local, "bindings", None)
        if bindings is None:
            bindings = self._local.bindings = {}
        made = bindings.get(outputs)
        if made is None or made[0] is not weight or made[1] is not bias:
            import onnxruntime as ort

            binding = self.session.io_binding()
            bound = (weight, bias) if self.last_layer is None else self.last_layer.fold(weight, bias)
            # the OrtValues wrap the arrays' memory: `made` keeps the arrays alive while they are bound
            binding.bind_ortvalue_input(WEIGHT, ort.OrtValue.ortvalue_from_numpy(bound[0]))
            binding.bind_ortvalue_input(BIAS, ort.OrtValue.ortvalue_from_numpy(bound[1]))
            made = bindings[outputs] = [weight, bias, binding, -1, bound]
        binding = made[2]
        if made[3] != rows:  # onnxruntime reuses bound outputs, which have the last call's batch size
            binding.clear_binding_outputs()
            for name in outputs:
                binding.bind_output(name)
            made[3] = rows
        return binding
