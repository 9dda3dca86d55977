"""Stage 2, analyse: find the taps and the frozen logits.

Walk back from the graph output: a trailing Softmax/LogSoftmax (and any Identity) is
cut off and recorded as the model's `OutputActivation`; what remains is the frozen
logits. Between the input and the logits, the *main path* (`blocks.main_path`) is the
sequence of tensors every input-to-logits path passes through: block boundaries. A
stage between two of them that holds a *layer* (an op of `LAYER_OPS` with a constant
weight) starts a block, and the block's input is a tap. So a chain of layers gets a tap
at every layer input (the paper's fully connected case), a CNN one at the input of every
conv in a chain and of every residual, inverted-residual or squeeze-excite block, and
one at the classifier's input. After the last layer only `TAIL_OPS` (pooling,
reshaping, a bias) may lead to the logits.

A tap of per-sample rank 2 or more ([C, H, W] in ONNX's channels-first layout) is
averaged inside the frozen segment (`reduce.py`, `--tap-pool`).

`--taps n1,n2` replaces the search: the named tensors are the taps, in the order given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from onnx import TensorProto
from s2rt.bundle.model import DType, InputSignature, OutputActivation
from s2rt.errors import UnsupportedGraphError

from s2conv.blocks import Stage, main_path
from s2conv.graph import GraphView, OnnxNode
from s2conv.reduce import Pooling, plan_pooling

TAPS_HINT = "consider `--taps NAME1,NAME2,...` to choose the tap tensors by name"
MAX_LISTED_CANDIDATES = 20
DEFAULT_POOL_GRID = 1

# Ops cut off the end of the graph: op → what the runtime applies instead.
OUTPUT_ACTIVATIONS: dict[str, OutputActivation] = {
    "Softmax": OutputActivation.SOFTMAX,
    "LogSoftmax": OutputActivation.LOG_SOFTMAX,
}
TRANSPARENT_TAIL_OPS = frozenset({"Identity"})

# Ops that may sit between the last layer and the logits: linear, per sample, so the
# logits stay the last layer's (pooled, reshaped) output. Elementwise ones need a constant operand.
TAIL_OPS = frozenset({"GlobalAveragePool", "AveragePool", "ReduceMean", "Flatten", "Reshape", "Squeeze", "Identity", "Dropout"})
TAIL_AFFINE_OPS = frozenset({"Add", "Sub", "Mul", "Div"})

INPUT_DTYPES: dict[int, DType] = {
    TensorProto.FLOAT: DType.FLOAT32,
    TensorProto.FLOAT16: DType.FLOAT16,
    TensorProto.INT8: DType.INT8,
    TensorProto.INT32: DType.INT32,
    TensorProto.INT64: DType.INT64,
    TensorProto.UINT8: DType.UINT8,
}



@dataclass(frozen=True)
class Block:
    """From one tap to the next (or to the logits): the stages that start with a layer."""

    input: str  # the block's tap
    output: str
    nodes: tuple[OnnxNode, ...]
    layer: OnnxNode  # its first layer: what `Tap.layer` names


@dataclass(frozen=True)
class TapSpec:
    """A tap as found in the source model, and how the segment reduces it."""

    source: str  # tensor name in the source model
    layer: str  # the node whose input it is ("" if no node reads it)
    pooling: Pooling  # per-sample shape before and after the reduction
    elem_type: int

    @property
    def shape(self) -> tuple[int, ...]:
        """Per sample, after the reduction: what the segment outputs and the cache holds."""
        return self.pooling.reduced_shape


@dataclass(frozen=True)
class TapPlan:
    """What the splitter cuts and the head adapts."""

    taps: tuple[TapSpec, ...]
    logits: str
    num_outputs: int
    output_activation: OutputActivation
    logits_elem_type: int = TensorProto.FLOAT
    blocks: tuple[Block, ...] = ()  # empty when the taps were chosen by name


def find_taps(view: GraphView, tap_names: Sequence[str] | None = None, pool_grid: int = DEFAULT_POOL_GRID) -> TapPlan:
    """Find the taps (or validate `tap_names`) and the frozen logits; `pool_grid` is
    `--tap-pool` (1: global average of feature-map taps, g: a g x g grid, 0: none).

    Raises `UnsupportedGraphError` naming the node, its op and what was expected when
    no layer leads to the logits, or naming the tensor when a tap or the logits are not
    float tensors of known per-sample shape.
    """
    logits, activation = strip_output_activation(view)
    num_outputs = _logits_width(view, logits)
    elem_type = view.value(logits).elem_type
    if tap_names is None:
        blocks = find_blocks(view, logits)
        taps = tuple(_tap_spec(view, block.input, block.layer.display_name, pool_grid) for block in blocks)
        return TapPlan(taps, logits, num_outputs, activation, elem_type, blocks)
    return TapPlan(_named_taps(view, tap_names, pool_grid), logits, num_outputs, activation, elem_type)


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


# --- layers and blocks ------------------------------------------------------------------


def find_blocks(view: GraphView, logits: str) -> tuple[Block, ...]:
    """The blocks from the model input to the logits, in order: one per stage of the main
    path that holds a layer, running until the next such stage."""
    stages = main_path(view, logits)
    starts = [i for i, stage in enumerate(stages) if first_layer(view, stage.nodes) is not None]
    if not starts:
        raise UnsupportedGraphError(_no_layer_message(view, logits, stages))
    _check_tail(view, logits, stages[starts[-1] + 1 :])
    blocks = []
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(stages)
        nodes = tuple(node for stage in stages[start:end] for node in stage.nodes)
        layer = first_layer(view, stages[start].nodes)
        assert layer is not None
        blocks.append(Block(stages[start].input, stages[end - 1].output, nodes, layer))
    return tuple(blocks)


def first_layer(view: GraphView, nodes: Sequence[OnnxNode]) -> OnnxNode | None:
    """The first node that is a frozen layer (an op of `LAYER_OPS` with a constant weight)."""
    for node in nodes:
        is_layer = LAYER_OPS.get(node.op) if node.is_standard else None
        if is_layer is not None and is_layer(view, node):
            return node
    return None


def Gemm(view: GraphView, node: OnnxNode) -> bool:  # noqa: N802 - named after the op
    """Y = alpha * A' B' + beta * C: the data is A, the weight B a constant."""
    return view.data_inputs(node) == node.inputs[:1]


def MatMul(view: GraphView, node: OnnxNode) -> bool:  # noqa: N802 - named after the op
    """Y = X W (or W X): one data input, one constant weight."""
    return len(view.data_inputs(node)) == 1


def Conv(view: GraphView, node: OnnxNode) -> bool:  # noqa: N802 - named after the op
    """Y = conv(X, W) + B, including depthwise (group = C) and pointwise (1x1): W a constant."""
    return view.data_inputs(node) == node.inputs[:1]


LAYER_OPS: dict[str, Callable[[GraphView, OnnxNode], bool]] = {"Gemm": Gemm, "MatMul": MatMul, "Conv": Conv, "ConvTranspose": Conv}


def _no_layer_message(view: GraphView, logits: str, stages: Sequence[Stage]) -> str:
    candidates = [node for stage in stages for node in stage.nodes if node.op in LAYER_OPS]
    found = f"; {candidates[-1].label} has no constant (initializer) weight" if candidates else ""
    if not stages:
        return f"the frozen logits {logits!r} are not computed from the model input {view.input_name!r}"
    return (
        f"no layer on the path from the input {view.input_name!r} to the logits {logits!r}: expected at least one "
        f"{', '.join(LAYER_OPS)} with a constant (initializer) weight{found}; {TAPS_HINT}"
    )


def _check_tail(view: GraphView, logits: str, tail: Sequence[Stage]) -> None:
    """After the last layer only pooling, reshaping and constant affine ops may remain."""
    for node in (node for stage in tail for node in stage.nodes):
        linear = node.is_standard and (
            node.op in TAIL_OPS or (node.op in TAIL_AFFINE_OPS and len(view.data_inputs(node)) == 1)
        )
        if not linear:
            raise UnsupportedGraphError(
                f"the frozen logits {logits!r} come from {_producer_label(view, logits)}; expected the last layer "
                f"({', '.join(LAYER_OPS)}) to produce them, followed by nothing but {', '.join(sorted(TAIL_OPS))} "
                f"or a constant bias/scale, but {node.label} follows it; {TAPS_HINT}"
            )


def _producer_label(view: GraphView, tensor: str) -> str:
    node = view.producer(tensor)
    if node is not None:
        return node.label
    return "the model input" if tensor == view.input_name else "a constant"


# --- taps -------------------------------------------------------------------------------


def _tap_spec(view: GraphView, source: str, layer: str, pool_grid: int) -> TapSpec:
    value = view.value(source)
    shape = value.sample_shape
    if not value.is_float or shape is None:
        raise UnsupportedGraphError(
            f"tap {source!r} (input of {layer or 'no node'}) is {value.type_name} {value.describe_shape()}; "
            "expected a float tensor [batch, ...] with fixed sizes after the batch dimension"
        )
    return TapSpec(source, layer, plan_pooling(source, shape, pool_grid), value.elem_type)


def _named_taps(view: GraphView, names: Sequence[str], pool_grid: int) -> tuple[TapSpec, ...]:
    if not names:
        raise UnsupportedGraphError("--taps: no tap names given; expected at least one tensor name")
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise UnsupportedGraphError(f"--taps: {', '.join(repr(n) for n in duplicates)} given more than once")
    candidates = _tap_candidates(view)
    for name in names:
        if name not in candidates:
            raise UnsupportedGraphError(f"--taps: {_why_not_a_tap(view, name)}; candidates: {_listed(candidates)}")
    return tuple(_tap_spec(view, name, _first_consumer(view, name), pool_grid) for name in names)


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
