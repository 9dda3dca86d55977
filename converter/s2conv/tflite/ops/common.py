"""Helpers the op handlers share: single-input ops, fused activations, spatial padding."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from tflite.BuiltinOperator import BuiltinOperator
from tflite.Padding import Padding

from s2conv.graph import OnnxNode
from s2conv.tflite.context import EmitContext
from s2conv.tflite.ir import Options

Pairs = list[tuple[int, int]]


def unary(ctx: EmitContext, node: OnnxNode, opcode: int, options: Options | None = None) -> None:
    """An elementwise op on input 0, in whatever layout that input has."""
    x = node.inputs[0]
    y = ctx.output(node.outputs[0], ctx.layout(x))
    ctx.op(opcode, [ctx.data(x)], [y], options)


def activation(ctx: EmitContext, node: OnnxNode, opcode: int, fused: int | None = None, options: Options | None = None) -> None:
    """Fold the activation into the op that computed the input when TFLite lets it
    (`fused`: its ActivationFunctionType) and nothing else reads that op's result;
    otherwise emit it as its own op."""
    x = node.inputs[0]
    producer = ctx.fusable_producer(x) if fused is not None else None
    if producer is not None and fused is not None and producer.fuse_activation(fused):
        ctx.fold_into(node.outputs[0], x)
        return
    unary(ctx, node, opcode, options)


def spatial_padding(
    ctx: EmitContext,
    sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int] | None,
    auto_pad: str,
) -> tuple[int, Pairs | None]:
    """TFLite's padding for an ONNX conv/pool: (SAME or VALID, explicit (before, after)
    pairs per spatial axis to pad first, or None)."""
    n = len(sizes)
    same = [same_pair(size, k, s, d) for size, k, s, d in zip(sizes, kernel, strides, dilations)]
    if auto_pad == "SAME_UPPER":
        pairs = same
    elif auto_pad == "SAME_LOWER":
        pairs = [(after, before) for before, after in same]
    elif auto_pad == "VALID":
        pairs = [(0, 0)] * n
    elif auto_pad == "NOTSET":
        given = tuple(pads) if pads else (0,) * (2 * n)
        pairs = [(int(given[i]), int(given[i + n])) for i in range(n)]
    else:
        raise ctx.fail(f"auto_pad {auto_pad!r} is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    if all(p == (0, 0) for p in pairs):
        return Padding.VALID, None
    if pairs == same:
        return Padding.SAME, None
    return Padding.VALID, pairs


def same_pair(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding: the extra pixel, if any, goes after."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def pad_spatial(ctx: EmitContext, name: str, source: int, pairs: Pairs, value: float = 0.0) -> int:
    """PAD (value 0) or PADV2 the channels-last tensor `source` (ONNX tensor `name`) by `pairs` on H, W."""
    shape = list(ctx.tensor(source).signature or ctx.tensor(source).shape)
    paddings = [(0, 0), *pairs, (0, 0)]
    padded = [d if d < 0 else d + before + after for d, (before, after) in zip(shape, paddings)]
    out = ctx.temp(f"{name}/pad", padded)
    table = ctx.constant(f"{name}/paddings", np.asarray(paddings, dtype=np.int32), np.int32)
    if value == 0.0:
        ctx.op(BuiltinOperator.PAD, [source, table], [out], Options("PadOptions"))
    else:
        fill = ctx.constant(f"{name}/pad_value", np.float32(value))
        ctx.op(BuiltinOperator.PADV2, [source, table, fill], [out], Options("PadV2Options"))
    return out


def spatial_sizes(ctx: EmitContext, name: str) -> tuple[int, ...]:
    """H, W (and further spatial sizes) of an NCHW tensor."""
    return tuple(ctx.shape(name)[2:])


def ints(values: Sequence[int] | None, default: int, n: int) -> tuple[int, ...]:
    return tuple(int(v) for v in values) if values else (default,) * n

