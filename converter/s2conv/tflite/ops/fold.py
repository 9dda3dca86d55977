"""Fold a per-channel affine map y = x * scale + shift into the conv or FC that computed x.

A BatchNormalization after a conv, the bias Add after a MatMul, a per-channel Mul: none
of them needs its own op when the weights can absorb it at emit time.
"""

from __future__ import annotations

import numpy as np
from tflite.BuiltinOperator import BuiltinOperator

from s2conv.tflite.context import EmitContext
from s2conv.tflite.ir import NO_INPUT
from s2conv.tflite.layout import constant_in

# op -> the axis of its weight tensor that indexes output channels
OUTPUT_CHANNEL_AXIS = {
    BuiltinOperator.CONV_2D: 0,  # OHWI
    BuiltinOperator.DEPTHWISE_CONV_2D: 3,  # 1HWO
    BuiltinOperator.FULLY_CONNECTED: 0,  # OI
}


def fold_affine(ctx: EmitContext, name: str, scale: np.ndarray | None, shift: np.ndarray | None) -> bool:
    """y = x * scale + shift, per output channel (the last TFLite axis of x); True if folded.

    The caller still has to `ctx.fold_into(output, name)` when this returns True.
    """
    op = ctx.fusable_producer(name)
    if op is None or op.opcode not in OUTPUT_CHANNEL_AXIS or op.has_fused_activation:
        return False
    weights = ctx.tensor(op.inputs[1])
    axis = OUTPUT_CHANNEL_AXIS[op.opcode]
    channels = weights.shape[axis]
    if weights.data is None or any(v is not None and v.size not in (1, channels) for v in (scale, shift)):
        return False
    if len(op.inputs) < 3 or op.inputs[2] == NO_INPUT:
        bias_index = ctx.constant(f"{weights.name}/bias", np.zeros(channels, np.float32))
        op.inputs[2:] = [bias_index]
    bias = ctx.tensor(op.inputs[2])
    assert bias.data is not None
    b = bias.data.astype(np.float64)
    if scale is not None:
        s = np.broadcast_to(scale.astype(np.float64).reshape(-1), (channels,))
        shape = [1] * weights.data.ndim
        shape[axis] = channels
        weights.data = (weights.data.astype(np.float64) * s.reshape(shape)).astype(np.float32)
        b = b * s
    if shift is not None:
        b = b + np.broadcast_to(shift.astype(np.float64).reshape(-1), (channels,))
    bias.data = b.astype(np.float32)
    return True


def channel_vector(ctx: EmitContext, data: str, value: np.ndarray, output: str) -> np.ndarray | None:
    """`value`, a constant operand of an elementwise op on `data`, as one number per channel
    of `data`'s last TFLite axis; None if it varies along any other axis or broadcasts
    `data` to a larger shape."""
    rank = ctx.rank(data)
    if value.ndim > rank or ctx.shape(output) != ctx.shape(data):
        return None
    laid_out = constant_in(value, rank, ctx.layout(data))
    if any(d != 1 for d in laid_out.shape[:-1]):
        return None
    return laid_out.reshape(-1)
