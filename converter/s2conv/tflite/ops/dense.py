"""Gemm and MatMul with a constant weight -> FULLY_CONNECTED."""

from __future__ import annotations

import numpy as np
from tflite.BuiltinOperator import BuiltinOperator

from s2conv.graph import OnnxNode
from s2conv.tflite.context import EmitContext
from s2conv.tflite.ir import Options
from s2conv.tflite.layout import identity
from s2conv.tflite.ops.registry import onnx_op


def fully_connected(ctx: EmitContext, node: OnnxNode, weights: np.ndarray, bias: np.ndarray | None) -> None:
    """y = x W^T + b with W (out x in); inputs of rank > 2 keep their leading dims."""
    x = node.inputs[0]
    rank = ctx.rank(x)
    source = ctx.data(x, identity(rank))
    w = ctx.constant(f"{node.display_name}/weights", weights.astype(np.float32))
    b = ctx.constant(f"{node.display_name}/bias", (np.zeros(len(weights)) if bias is None else bias).astype(np.float32))
    y = ctx.output(node.outputs[0])
    options = Options("FullyConnectedOptions", {"KeepNumDims": rank > 2})
    ctx.op(BuiltinOperator.FULLY_CONNECTED, [source, w, b], [y], options)


@onnx_op()
def Gemm(ctx: EmitContext, node: OnnxNode, *, alpha: float = 1.0, beta: float = 1.0, transA: int = 0, transB: int = 0) -> None:  # noqa: N802, N803
    if transA:
        raise ctx.fail("transA=1 (a transposed data input) is not supported; export the model without it")
    if ctx.rank(node.inputs[0]) != 2:
        raise ctx.fail(f"Gemm input must be 2-D, found rank {ctx.rank(node.inputs[0])}")
    b = ctx.const(node.inputs[1], "weight B").astype(np.float64)
    if b.ndim != 2:
        raise ctx.fail(f"weight B must be 2-D, found shape {b.shape}")
    weights = (b if transB else b.T) * alpha
    c = ctx.optional_const(node, 2, "bias C")
    bias = None
    if c is not None:
        if c.size not in (1, len(weights)) or (c.ndim == 2 and c.shape[0] != 1):
            raise ctx.fail(f"bias C of shape {c.shape} is not one value per output ({len(weights)})")
        bias = np.broadcast_to(c.astype(np.float64).reshape(-1) * beta, (len(weights),))
    fully_connected(ctx, node, weights, bias)


@onnx_op()
def MatMul(ctx: EmitContext, node: OnnxNode) -> None:  # noqa: N802
    b = ctx.const(node.inputs[1], "weight (second input)")
    if b.ndim != 2:
        raise ctx.fail(f"the constant weight must be 2-D, found shape {b.shape}")
    if ctx.rank(node.inputs[0]) < 2:
        raise ctx.fail("the data input must have a batch dimension and a feature dimension")
    fully_connected(ctx, node, b.astype(np.float64).T, None)
