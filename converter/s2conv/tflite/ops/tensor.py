"""Ops that move data rather than compute: Identity, Dropout, Cast, Flatten, Reshape,
Squeeze, Unsqueeze (RESHAPE to the inferred shape), Concat, Pad."""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto
from tflite.BuiltinOperator import BuiltinOperator
from tflite.MirrorPadMode import MirrorPadMode

from s2conv.deterministic import DEFAULT_DROPOUT_RATIO, dropout_problem
from s2conv.graph import OnnxNode
from s2conv.tflite.context import EmitContext
from s2conv.tflite.ir import Options
from s2conv.tflite.layout import axis_in, identity, is_pure_reshape
from s2conv.tflite.ops.registry import onnx_op


@onnx_op()
def Identity(ctx: EmitContext, node: OnnxNode) -> None:  # noqa: N802
    ctx.alias(node.outputs[0], node.inputs[0])


@onnx_op()
def Dropout(ctx: EmitContext, node: OnnxNode, *, ratio: float = 0.5, seed: int = 0) -> None:  # noqa: N802
    """The identity at inference. Since opset 12 the ratio and training_mode are inputs; in
    training mode with a ratio above 0 it drops values at random, which is refused."""
    del ratio, seed  # the attribute ratio (before opset 12) only applies in training, which those opsets never are
    if any(ctx.is_used(name) for name in node.outputs[1:]):
        raise ctx.fail("the mask output is not supported")
    training = ctx.optional_const(node, 2, "training_mode")
    if training is not None:
        given = ctx.optional_const(node, 1, "ratio")
        drop = float(given.reshape(-1)[0]) if given is not None else DEFAULT_DROPOUT_RATIO
        problem = dropout_problem(drop, bool(training.reshape(-1)[0]))
        if problem is not None:
            raise ctx.fail(problem)
    ctx.alias(node.outputs[0], node.inputs[0])


@onnx_op()
def Cast(ctx: EmitContext, node: OnnxNode, *, to: int = TensorProto.FLOAT, saturate: int = 1) -> None:  # noqa: N802
    del saturate  # only for float8 targets
    if to != TensorProto.FLOAT:
        raise ctx.fail(f"Cast to {TensorProto.DataType.Name(to)}: the TFLite segment computes in float32 only")
    ctx.alias(node.outputs[0], node.inputs[0])


def _reshape_to_inferred(ctx: EmitContext, node: OnnxNode) -> None:
    """RESHAPE input 0 to the output's inferred shape (batch -1), in ONNX element order."""
    x, y = node.inputs[0], node.outputs[0]
    rank = ctx.rank(x)
    per_sample_in, per_sample_out = math.prod(ctx.shape(x)[1:]), math.prod(ctx.shape(y)[1:])
    if per_sample_in != per_sample_out:
        raise ctx.fail(
            f"it turns {per_sample_in} values per sample into {per_sample_out}: it moves samples across the batch "
            "dimension, and a segment must keep samples apart"
        )
    # Bytes already in ONNX order (only size-1 axes moved): reshape directly, no relayout first.
    in_order = is_pure_reshape(ctx.shape(x), ctx.layout(x), identity(rank))
    source = ctx.data(x) if in_order else ctx.data(x, identity(rank))
    ctx.reshape(source, ctx.output(y))


@onnx_op()
def Flatten(ctx: EmitContext, node: OnnxNode, *, axis: int = 1) -> None:  # noqa: N802
    if axis != 1:
        raise ctx.fail(f"Flatten with axis={axis}: only axis=1 keeps the batch dimension apart")
    _reshape_to_inferred(ctx, node)


@onnx_op()
def Reshape(ctx: EmitContext, node: OnnxNode, *, allowzero: int = 0) -> None:  # noqa: N802
    del allowzero  # the target shape is taken from shape inference, not from the shape input
    _reshape_to_inferred(ctx, node)


@onnx_op()
def Squeeze(ctx: EmitContext, node: OnnxNode, *, axes: tuple[int, ...] | None = None) -> None:  # noqa: N802
    del axes  # before opset 13; the inferred output shape says the same
    _reshape_to_inferred(ctx, node)


@onnx_op()
def Unsqueeze(ctx: EmitContext, node: OnnxNode, *, axes: tuple[int, ...] | None = None) -> None:  # noqa: N802
    del axes
    _reshape_to_inferred(ctx, node)


@onnx_op(data_inputs=None)
def Concat(ctx: EmitContext, node: OnnxNode, *, axis: int = 0) -> None:  # noqa: N802
    y = node.outputs[0]
    rank = ctx.rank(y)
    axis = axis + rank if axis < 0 else axis
    constants = [name for name in node.inputs if ctx.is_constant(name)]
    if constants or axis == 0:
        problem = f"constant input {constants[0]!r}" if constants else "axis 0, the batch axis"
        raise ctx.fail(f"Concat with {problem} is not supported; only data tensors along a non-batch axis")
    layout = ctx.layout(node.inputs[0])
    inputs = [ctx.data(name, layout) for name in node.inputs]
    options = Options("ConcatenationOptions", {"Axis": axis_in(layout, axis)})
    ctx.op(BuiltinOperator.CONCATENATION, inputs, [ctx.output(y, layout)], options)


@onnx_op()
def Pad(  # noqa: N802
    ctx: EmitContext, node: OnnxNode, *, mode: str = "constant", pads: tuple[int, ...] | None = None, value: float = 0.0
) -> None:
    x, y = node.inputs[0], node.outputs[0]
    rank = ctx.rank(x)
    given = ctx.optional_const(node, 1, "pads")  # an input since opset 11
    amounts = [int(p) for p in (given.reshape(-1) if given is not None else pads or ())]
    fill = ctx.optional_const(node, 2, "constant_value")
    fill_value = float(fill.reshape(-1)[0]) if fill is not None and fill.size else float(value)
    axes_given = ctx.optional_const(node, 3, "axes")  # opset 18
    axes = [int(a) + rank if a < 0 else int(a) for a in (axes_given.reshape(-1) if axes_given is not None else range(rank))]
    if len(amounts) != 2 * len(axes):
        raise ctx.fail(f"pads {amounts} do not give a begin and an end for each of the axes {axes}")
    per_axis = {a: (amounts[i], amounts[i + len(axes)]) for i, a in enumerate(axes)}
    if per_axis.get(0, (0, 0)) != (0, 0):
        raise ctx.fail("padding the batch axis is not supported")
    if any(p < 0 for pair in per_axis.values() for p in pair):
        raise ctx.fail(f"negative pads {amounts} (cropping) are not supported")
    layout = ctx.layout(x)
    table = np.asarray([per_axis.get(a, (0, 0)) for a in layout], dtype=np.int32)
    paddings = ctx.constant(f"{y}/paddings", table, np.int32)
    out = ctx.output(y, layout)
    if mode == "constant" and fill_value == 0.0:
        ctx.op(BuiltinOperator.PAD, [ctx.data(x), paddings], [out], Options("PadOptions"))
    elif mode == "constant":
        filler = ctx.constant(f"{y}/value", np.float32(fill_value))
        ctx.op(BuiltinOperator.PADV2, [ctx.data(x), paddings, filler], [out], Options("PadV2Options"))
    elif mode == "reflect":
        options = Options("MirrorPadOptions", {"Mode": MirrorPadMode.REFLECT})
        ctx.op(BuiltinOperator.MIRROR_PAD, [ctx.data(x), paddings], [out], options)
    else:
        raise ctx.fail(f"Pad mode {mode!r} is not supported (constant or reflect)")
