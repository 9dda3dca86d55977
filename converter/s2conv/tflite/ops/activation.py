"""Activations (fused into the op before them where TFLite can), Softmax and LogSoftmax."""

from __future__ import annotations

import math

import numpy as np
from tflite.ActivationFunctionType import ActivationFunctionType as Act
from tflite.BuiltinOperator import BuiltinOperator

from s2conv.graph import OnnxNode
from s2conv.tflite.context import EmitContext
from s2conv.tflite.ir import Options
from s2conv.tflite.layout import axis_in
from s2conv.tflite.ops.common import activation, unary
from s2conv.tflite.ops.registry import onnx_op

# Clip ranges that are a TFLite activation: (min, max) -> (op, fused activation or None)
CLIP_ACTIVATIONS = {
    (0.0, 6.0): (BuiltinOperator.RELU6, Act.RELU6),
    (0.0, math.inf): (BuiltinOperator.RELU, Act.RELU),
    (-1.0, 1.0): (BuiltinOperator.RELU_N1_TO_1, Act.RELU_N1_TO_1),
    (0.0, 1.0): (BuiltinOperator.RELU_0_TO_1, None),
}


@onnx_op()
def Relu(ctx: EmitContext, node: OnnxNode) -> None:  # noqa: N802
    activation(ctx, node, BuiltinOperator.RELU, Act.RELU)


@onnx_op()
def Clip(ctx: EmitContext, node: OnnxNode, *, min: float = -math.inf, max: float = math.inf) -> None:  # noqa: A002, N802
    lo_in, hi_in = ctx.optional_const(node, 1, "min"), ctx.optional_const(node, 2, "max")  # inputs since opset 11
    lo = float(lo_in) if lo_in is not None else float(min)
    hi = float(hi_in) if hi_in is not None else float(max)
    if (lo, hi) in CLIP_ACTIVATIONS:
        opcode, fused = CLIP_ACTIVATIONS[(lo, hi)]
        activation(ctx, node, opcode, fused)
        return
    x, y = node.inputs[0], node.outputs[0]
    if math.isinf(lo) and math.isinf(hi):
        ctx.alias(y, x)
        return
    current = ctx.data(x)
    for bound, opcode, name in ((lo, BuiltinOperator.MAXIMUM, "min"), (hi, BuiltinOperator.MINIMUM, "max")):
        if math.isinf(bound):
            continue
        limit = ctx.constant(f"{y}/{name}", np.float32(bound))
        source = ctx.tensor(current)
        out = ctx.temp(f"{y}/{name}", source.signature or source.shape)
        ctx.op(opcode, [current, limit], [out], Options("MaximumMinimumOptions"))
        current = out
    ctx.bind(y, current, ctx.layout(x))


@onnx_op()
def Sigmoid(ctx: EmitContext, node: OnnxNode) -> None:  # noqa: N802
    unary(ctx, node, BuiltinOperator.LOGISTIC)


@onnx_op()
def Tanh(ctx: EmitContext, node: OnnxNode) -> None:  # noqa: N802
    unary(ctx, node, BuiltinOperator.TANH)


@onnx_op()
def LeakyRelu(ctx: EmitContext, node: OnnxNode, *, alpha: float = 0.01) -> None:  # noqa: N802
    unary(ctx, node, BuiltinOperator.LEAKY_RELU, Options("LeakyReluOptions", {"Alpha": float(alpha)}))


@onnx_op()
def HardSwish(ctx: EmitContext, node: OnnxNode) -> None:  # noqa: N802
    unary(ctx, node, BuiltinOperator.HARD_SWISH)


@onnx_op()
def HardSigmoid(ctx: EmitContext, node: OnnxNode, *, alpha: float = 0.2, beta: float = 0.5) -> None:  # noqa: N802
    """max(0, min(1, alpha x + beta)): MUL, ADD, RELU_0_TO_1 (TFLite has no HARD_SIGMOID)."""
    x, y = node.inputs[0], node.outputs[0]
    source = ctx.tensor(ctx.data(x))
    shape = source.signature or source.shape
    scaled, shifted = ctx.temp(f"{y}/scaled", shape), ctx.temp(f"{y}/shifted", shape)
    ctx.op(BuiltinOperator.MUL, [ctx.data(x), ctx.constant(f"{y}/alpha", np.float32(alpha))], [scaled], Options("MulOptions"))
    ctx.op(BuiltinOperator.ADD, [scaled, ctx.constant(f"{y}/beta", np.float32(beta))], [shifted], Options("AddOptions"))
    ctx.op(BuiltinOperator.RELU_0_TO_1, [shifted], [ctx.output(y, ctx.layout(x))])


def _softmax(ctx: EmitContext, node: OnnxNode, axis: int | None, opcode: int, options: Options | None) -> None:
    x = node.inputs[0]
    rank = ctx.rank(x)
    if axis is None:
        axis = -1 if ctx.opset >= 13 else 1
    axis = axis + rank if axis < 0 else axis
    # Before opset 13 the op flattened everything from `axis` on; for the last axis it is the same.
    last = axis_in(ctx.layout(x), axis) == rank - 1 and (ctx.opset >= 13 or axis == rank - 1)
    if not last:
        raise ctx.fail(f"{node.op} over axis {axis} of a rank-{rank} tensor: only the last (channel) axis is supported")
    unary(ctx, node, opcode, options)


@onnx_op()
def Softmax(ctx: EmitContext, node: OnnxNode, *, axis: int | None = None) -> None:  # noqa: N802
    _softmax(ctx, node, axis, BuiltinOperator.SOFTMAX, Options("SoftmaxOptions", {"Beta": 1.0}))


@onnx_op()
def LogSoftmax(ctx: EmitContext, node: OnnxNode, *, axis: int | None = None) -> None:  # noqa: N802
    _softmax(ctx, node, axis, BuiltinOperator.LOG_SOFTMAX, Options("LogSoftmaxOptions"))
