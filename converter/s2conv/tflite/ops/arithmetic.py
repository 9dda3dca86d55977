"""Add, Sub, Mul, Div: one broadcasting TFLite op, or folded into the conv/FC before them
(a bias Add after MatMul, a per-channel scale) when the other operand is a constant."""

from __future__ import annotations

import numpy as np
from tflite.BuiltinOperator import BuiltinOperator

from s2conv.graph import OnnxNode
from s2conv.tflite.context import EmitContext
from s2conv.tflite.ir import Options
from s2conv.tflite.layout import Layout, constant_in, identity
from s2conv.tflite.ops.fold import channel_vector, fold_affine
from s2conv.tflite.ops.registry import onnx_op


def _binary(ctx: EmitContext, node: OnnxNode, opcode: int, options: str) -> None:
    y = node.outputs[0]
    rank = ctx.rank(y)
    data = [name for name in node.inputs if not ctx.is_constant(name)]
    for name in data:
        if ctx.rank(name) != rank:
            raise ctx.fail(
                f"input {name!r} has rank {ctx.rank(name)} but the result has rank {rank}; "
                "broadcasting data tensors of different ranks is not supported"
            )
    layout = _shared_layout(ctx, data, rank)
    operands = [
        ctx.constant(f"{y}/operand{i}", constant_in(ctx.const(name, "operand").astype(np.float32), rank, layout))
        if ctx.is_constant(name)
        else ctx.data(name, layout)
        for i, name in enumerate(node.inputs)
    ]
    ctx.op(opcode, operands, [ctx.output(y, layout)], Options(options))


def _shared_layout(ctx: EmitContext, data: list[str], rank: int) -> Layout:
    """The first non-default layout among the data operands (so a feature map stays NHWC)."""
    for name in data:
        if ctx.layout(name) != identity(rank):
            return ctx.layout(name)
    return identity(rank)


def _fold_constant(ctx: EmitContext, node: OnnxNode, *, as_scale: bool, sign: float = 1.0, commutative: bool = False) -> bool:
    """Try folding `data <op> c`, c constant, into the op that computed data: as a scale
    (Mul) or as a shift `sign * c` (Add, Sub)."""
    data, constant = node.inputs
    if commutative and ctx.is_constant(data):
        data, constant = constant, data
    if ctx.is_constant(data) or not ctx.is_constant(constant):
        return False
    vector = channel_vector(ctx, data, ctx.const(constant, "operand").astype(np.float64), node.outputs[0])
    if vector is None:
        return False
    folded = fold_affine(ctx, data, vector, None) if as_scale else fold_affine(ctx, data, None, sign * vector)
    if folded:
        ctx.fold_into(node.outputs[0], data)
    return folded


@onnx_op(data_inputs=None)
def Add(ctx: EmitContext, node: OnnxNode) -> None:  # noqa: N802
    if not _fold_constant(ctx, node, as_scale=False, commutative=True):
        _binary(ctx, node, BuiltinOperator.ADD, "AddOptions")


@onnx_op(data_inputs=None)
def Sub(ctx: EmitContext, node: OnnxNode) -> None:  # noqa: N802
    if not _fold_constant(ctx, node, as_scale=False, sign=-1.0):
        _binary(ctx, node, BuiltinOperator.SUB, "SubOptions")


@onnx_op(data_inputs=None)
def Mul(ctx: EmitContext, node: OnnxNode) -> None:  # noqa: N802
    if not _fold_constant(ctx, node, as_scale=True, commutative=True):
        _binary(ctx, node, BuiltinOperator.MUL, "MulOptions")


@onnx_op(data_inputs=None)
def Div(ctx: EmitContext, node: OnnxNode) -> None:  # noqa: N802
    _binary(ctx, node, BuiltinOperator.DIV, "DivOptions")
