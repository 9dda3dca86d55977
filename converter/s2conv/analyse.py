"""Stage 2, analyse: find the taps and the frozen logits of a fully connected model.

Walk from the graph output back to the input. A trailing Softmax/LogSoftmax (and any
Identity) is cut off and recorded as the model's `OutputActivation`; what remains is
the frozen logits, which must be the output of the last *layer*. A layer is a Gemm, or a
MatMul, whose weight is a constant, optionally followed by an Add with a constant bias.
Every layer's *input* tensor on the path is a tap, listed from the model input to the
last layer. Between layers only the ops in `PASS_THROUGH_OPS` may appear.

`--taps n1,n2` replaces the walk: the named tensors are the taps, in the order given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from onnx import TensorProto
from s2rt.bundle.model import DType, InputSignature, OutputActivation
from s2rt.errors import UnsupportedGraphError

from s2conv.graph import GraphView, OnnxNode

TAPS_HINT = "consider `--taps NAME1,NAME2,...` to choose the tap tensors by name"
MAX_LISTED_CANDIDATES = 20

# The registry of ops the tap finder walks through between layers: op → why it is fine.
PASS_THROUGH_OPS: dict[str, str] = {
    "Relu": "activation",
    "LeakyRelu": "activation",
    "Sigmoid": "activation",
    "Tanh": "activation",
    "Gelu": "activation",
    "Elu": "activation",
    "Selu": "activation",
    "HardSigmoid": "activation",
    "HardSwish": "activation",
    "Clip": "activation (bounds are constants)",
    "Identity": "no-op",
    "Dropout": "no-op at inference",
    "Sub": "normalisation by a constant",
    "Div": "normalisation by a constant",
    "Mul": "normalisation by a constant",
    "Add": "normalisation by a constant",
    "Flatten": "reshape",
    "Reshape": "reshape to a constant shape",
    "Cast": "type conversion",
    "BatchNormalization": "per-feature affine map at inference",
}

# Ops cut off the end of the graph: op → what the runtime applies instead.
OUTPUT_ACTIVATIONS: dict[str, OutputActivation] = {
    "Softmax": OutputActivation.SOFTMAX,
    "LogSoftmax": OutputActivation.LOG_SOFTMAX,
}
TRANSPARENT_TAIL_OPS = frozenset({"Identity"})

INPUT_DTYPES: dict[int, DType] = {
    TensorProto.FLOAT: DType.FLOAT32,
    TensorProto.FLOAT16: DType.FLOAT16,
    TensorProto.INT8: DType.INT8,
    TensorProto.INT32: DType.INT32,
    TensorProto.INT64: DType.INT64,
    TensorProto.UINT8: DType.UINT8,
}


@dataclass(frozen=True)
class Layer:
    """A frozen fully connected layer: `node` (Gemm or MatMul) plus its optional bias Add."""

    node: OnnxNode
    input: str  # the layer's data input: a tap
    output: str  # after the bias Add, if any
    bias: OnnxNode | None = None


@dataclass(frozen=True)
class TapSpec:
    """A tap as found in the source model."""

    source: str  # tensor name in the source model
    layer: str  # the node whose input it is ("" if no node reads it)
    shape: tuple[int, ...]  # per sample
    elem_type: int


@dataclass(frozen=True)
class TapPlan:
    """What the splitter cuts and the head adapts."""

    taps: tuple[TapSpec, ...]
    logits: str
    num_outputs: int
    output_activation: OutputActivation
    logits_elem_type: int = TensorProto.FLOAT
    layers: tuple[Layer, ...] = ()  # empty when the taps were chosen by name


def find_taps(view: GraphView, tap_names: Sequence[str] | None = None) -> TapPlan:
    """Find the taps (or validate `tap_names`) and the frozen logits.

    Raises `UnsupportedGraphError` naming the node, its op and what was expected when
    the graph is not a single chain of layers, or naming the tensor when a tap or the
    logits are not float tensors of known per-sample shape.
    """
    logits, activation = strip_output_activation(view)
    num_outputs = _logits_width(view, logits)
    elem_type = view.value(logits).elem_type
    if tap_names is None:
        layers = layers_on_path(view, logits)
        taps = tuple(_tap_spec(view, layer.input, layer.node.display_name) for layer in layers)
        return TapPlan(taps, logits, num_outputs, activation, elem_type, layers)
    return TapPlan(_named_taps(view, tap_names), logits, num_outputs, activation, elem_type)


def input_signature(view: GraphView) -> InputSignature:
    """The per-sample input: name, shape (batch dimension dropped) and dtype."""
    value = view.value(view.input_name)
    shape = value.sample_shape
    if shape is None:
        raise UnsupportedGraphError(
            f"model input {value.name!r} has shape {value.describe_shape()}; expected [batch, d1, ...] "
            "with every dimension after the batch a fixed size"
        )
    if value.elem_type not in INPUT_DTYPES:
        have = ", ".join(DType(d).name.lower() for d in INPUT_DTYPES.values())
        raise UnsupportedGraphError(f"model input {value.name!r} has type {value.type_name}; expected one of: {have}")
    return InputSignature(name=value.name, shape=shape, dtype=INPUT_DTYPES[value.elem_type])


# --- the output end -------------------------------------------------------------------


def strip_output_activation(view: GraphView) -> tuple[str, OutputActivation]:
    """Walk back from the graph output past Identity and one Softmax/LogSoftmax."""
    tensor, activation = view.output_name, OutputActivation.NONE
    while (node := view.producer(tensor)) is not None and node.is_standard:
        if node.op in TRANSPARENT_TAIL_OPS:
            tensor = node.inputs[0]
        elif node.op in OUTPUT_ACTIVATIONS and activation is OutputActivation.NONE:
            _check_activation_axis(view, node)
            activation, tensor = OUTPUT_ACTIVATIONS[node.op], node.inputs[0]
        else:
            break
    return tensor, activation


def _check_activation_axis(view: GraphView, node: OnnxNode) -> None:
    shape = view.value(node.inputs[0]).shape
    if shape is None:
        return
    default_axis = -1 if view.opset >= 13 else 1
    axis = int(node.attrs.get("axis", default_axis))
    if axis % len(shape) != len(shape) - 1:
        raise UnsupportedGraphError(
            f"{node.label} at the output normalises over axis {axis} of a rank-{len(shape)} tensor; "
            "expected it over the last axis (the classes)"
        )


def _logits_width(view: GraphView, logits: str) -> int:
    value = view.value(logits)
    shape = value.sample_shape
    if not value.is_float or shape is None or len(shape) != 1:
        raise UnsupportedGraphError(
            f"the frozen logits {logits!r} are {value.type_name} {value.describe_shape()}; "
            "expected a float tensor [batch, C] of class scores"
        )
    return shape[0]


# --- walking the chain of layers ------------------------------------------------------


def layers_on_path(view: GraphView, logits: str) -> tuple[Layer, ...]:
    """The layers from the model input to the logits, in that order."""
    last = layer_ending_at(view, logits)
    if last is None:
        raise UnsupportedGraphError(
            f"the frozen logits {logits!r} come from {_producer_label(view, logits)}; expected the last "
            f"layer (Gemm, or MatMul with a constant weight and an optional bias Add) to produce them; {TAPS_HINT}"
        )
    layers, tensor = [last], last.input
    while tensor != view.input_name:
        layer = layer_ending_at(view, tensor)
        if layer is not None:
            layers.append(layer)
            tensor = layer.input
        else:
            tensor = _step_back(view, tensor)
    return tuple(reversed(layers))


def layer_ending_at(view: GraphView, tensor: str) -> Layer | None:
    """The layer whose output (after its bias Add) is `tensor`, or None."""
    node = view.producer(tensor)
    if node is None or not node.is_standard:
        return None
    if node.op == "Add":
        return _bias_add(view, node)
    recognise = LAYER_OPS.get(node.op)
    return recognise(view, node) if recognise else None


def _bias_add(view: GraphView, add: OnnxNode) -> Layer | None:
    data = view.data_inputs(add)
    if len(data) != 1 or len(view.consumers_of(data[0])) != 1:
        return None
    inner = view.producer(data[0])
    recognise = LAYER_OPS.get(inner.op) if inner is not None and inner.is_standard else None
    if inner is None or recognise is None:
        return None
    layer = recognise(view, inner)
    return Layer(layer.node, layer.input, add.outputs[0], bias=add)


def Gemm(view: GraphView, node: OnnxNode) -> Layer:  # noqa: N802 - named after the op
    """Y = alpha * A' B' + beta * C: A is the data (not transposed), B and C constants."""
    if int(node.attrs.get("transA", 0)) != 0:
        raise UnsupportedGraphError(f"{node.label} has transA=1; expected the layer input as A, one sample per row; {TAPS_HINT}")
    _expect_data_then_constants(view, node, "A", "weight B and bias C")
    return Layer(node, node.inputs[0], node.outputs[0])


def MatMul(view: GraphView, node: OnnxNode) -> Layer:  # noqa: N802 - named after the op
    """Y = X W: X is the data, W a constant weight."""
    _expect_data_then_constants(view, node, "first input", "weight (second input)")
    return Layer(node, node.inputs[0], node.outputs[0])


LAYER_OPS: dict[str, Callable[[GraphView, OnnxNode], Layer]] = {"Gemm": Gemm, "MatMul": MatMul}


def _expect_data_then_constants(view: GraphView, node: OnnxNode, data_role: str, constant_role: str) -> None:
    data = view.data_inputs(node)
    if data != node.inputs[:1]:
        found = ", ".join(repr(n) for n in data) or "none"
        raise UnsupportedGraphError(
            f"{node.label} is a layer on the path to the logits; expected the data as its {data_role} "
            f"and a constant (initializer) {constant_role}, found non-constant inputs: {found}; {TAPS_HINT}"
        )


def _step_back(view: GraphView, tensor: str) -> str:
    """Through one pass-through node: the tensor its single data input is."""
    node = view.producer(tensor)
    if node is None:
        raise UnsupportedGraphError(
            f"tensor {tensor!r} on the path to the logits is not computed from the model input {view.input_name!r}; {TAPS_HINT}"
        )
    if not node.is_standard or node.op not in PASS_THROUGH_OPS:
        raise UnsupportedGraphError(
            f"{node.label} is on the path from the input to the logits, but the tap finder does not know "
            f"op {_op_name(node)}; expected a layer ({', '.join(LAYER_OPS)}) or one of: "
            f"{', '.join(sorted(PASS_THROUGH_OPS))}; {TAPS_HINT}"
        )
    data = view.data_inputs(node)
    if len(data) != 1:
        raise UnsupportedGraphError(
            f"{node.label} has {len(data)} non-constant inputs ({', '.join(repr(n) for n in data)}); "
            f"expected a single chain of layers from the input to the logits (no branches); {TAPS_HINT}"
        )
    return data[0]


def _op_name(node: OnnxNode) -> str:
    return f"{node.domain}::{node.op}" if node.domain and not node.is_standard else node.op


def _producer_label(view: GraphView, tensor: str) -> str:
    node = view.producer(tensor)
    if node is not None:
        return node.label
    return "the model input" if tensor == view.input_name else "a constant"


# --- taps -------------------------------------------------------------------------------


def _tap_spec(view: GraphView, source: str, layer: str) -> TapSpec:
    value = view.value(source)
    shape = value.sample_shape
    if not value.is_float or shape is None:
        raise UnsupportedGraphError(
            f"tap {source!r} (input of {layer or 'no node'}) is {value.type_name} {value.describe_shape()}; "
            "expected a float tensor [batch, ...] with fixed sizes after the batch dimension"
        )
    return TapSpec(source, layer, shape, value.elem_type)


def _named_taps(view: GraphView, names: Sequence[str]) -> tuple[TapSpec, ...]:
    if not names:
        raise UnsupportedGraphError("--taps: no tap names given; expected at least one tensor name")
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise UnsupportedGraphError(f"--taps: {', '.join(repr(n) for n in duplicates)} given more than once")
    candidates = _tap_candidates(view)
    for name in names:
        if name not in candidates:
            raise UnsupportedGraphError(f"--taps: {_why_not_a_tap(view, name)}; candidates: {_listed(candidates)}")
    return tuple(_tap_spec(view, name, _first_consumer(view, name)) for name in names)


def _tap_candidates(view: GraphView) -> tuple[str, ...]:
    """Float tensors computed from the input, in topological order."""
    return tuple(name for name in view.tensors_from_input() if view.value(name).is_float)


def _why_not_a_tap(view: GraphView, name: str) -> str:
    if name not in view.values and view.producer(name) is None:
        return f"no tensor named {name!r} in the model"
    if view.is_constant(name):
        return f"{name!r} is a constant, not computed from the input {view.input_name!r}"
    return f"{name!r} is {view.value(name).type_name}; a tap must be a float tensor"


def _first_consumer(view: GraphView, name: str) -> str:
    consumers = view.consumers_of(name)
    return consumers[0].display_name if consumers else ""


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED_CANDIDATES])
    more = len(names) - MAX_LISTED_CANDIDATES
    return f"{shown}, ... ({more} more)" if more > 0 else shown
