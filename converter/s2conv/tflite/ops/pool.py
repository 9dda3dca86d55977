"""Pooling and reductions: MaxPool, AveragePool -> *_POOL_2D; GlobalAveragePool,
GlobalMaxPool, ReduceMean -> MEAN / REDUCE_MAX over the mapped axes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from tflite.BuiltinOperator import BuiltinOperator
from tflite.Padding import Padding

from s2conv.graph import OnnxNode
from s2conv.tflite.context import EmitContext
from s2conv.tflite.ir import Options
from s2conv.tflite.layout import BATCH, Layout, axis_in, channels_last
from s2conv.tflite.ops.common import ints, pad_spatial, same_pair, spatial_padding, spatial_sizes
from s2conv.tflite.ops.registry import onnx_op

LOWEST_FLOAT32 = float(np.finfo(np.float32).min)


def _pool(
    ctx: EmitContext,
    node: OnnxNode,
    opcode: int,
    kernel_shape: Sequence[int] | None,
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
    auto_pad: str,
    ceil_mode: int,
    pad_value: float | None,
) -> None:
    """`pad_value`: what explicit padding is filled with, or None for an average that must
    not count the padded cells: padded with zeros, averaged over the whole window, then
    scaled per output position by window size / cells inside the input."""
    x, y = node.inputs[0], node.outputs[0]
    if ctx.rank(x) != 4 or not kernel_shape or len(kernel_shape) != 2:
        raise ctx.fail("only 2-D pooling (4-D NCHW input, 2 kernel sizes) is supported")
    if any(ctx.is_used(name) for name in node.outputs[1:]):
        raise ctx.fail("the Indices output is not supported")
    kernel, stride = ints(kernel_shape, 1, 2), ints(strides, 1, 2)
    padding, explicit = spatial_padding(ctx, spatial_sizes(ctx, x), kernel, stride, (1, 1), pads, auto_pad)
    if ceil_mode:
        _check_ceil_mode_is_floor(ctx, x, kernel, stride, pads)
    source = ctx.data(x, channels_last(4))
    rescale = None
    if explicit is not None or (padding == Padding.SAME and pad_value == 0.0):
        if explicit is None:  # SAME padding, but ONNX counts the padded zeros and TFLite's SAME would not
            explicit = [same_pair(size, k, s, 1) for size, k, s in zip(spatial_sizes(ctx, x), kernel, stride)]
        if pad_value is None:
            rescale = _uncounted_padding_scale(ctx, spatial_sizes(ctx, x), kernel, stride, explicit)
        source = pad_spatial(ctx, x, source, explicit, pad_value or 0.0)
        padding = Padding.VALID
    options = Options(
        "Pool2DOptions",
        {"Padding": padding, "StrideH": stride[0], "StrideW": stride[1], "FilterHeight": kernel[0], "FilterWidth": kernel[1]},
    )
    if rescale is None:
        ctx.op(opcode, [source], [ctx.output(y, channels_last(4))], options)
        return
    pooled = ctx.temp(f"{y}/pooled", (BATCH, *rescale.shape[1:3], ctx.shape(y)[1]))
    ctx.op(opcode, [source], [pooled], options)
    scale = ctx.constant(f"{y}/count_scale", rescale)
    ctx.op(BuiltinOperator.MUL, [pooled, scale], [ctx.output(y, channels_last(4))], Options("MulOptions"))


def _uncounted_padding_scale(
    ctx: EmitContext, sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int], pairs: Sequence[tuple[int, int]]
) -> np.ndarray:
    """[1, OH, OW, 1]: window size / the number of its cells inside the input, per output position."""
    counts = []
    for size, k, s, (before, after) in zip(sizes, kernel, stride, pairs):
        starts = np.arange((size + before + after - k) // s + 1) * s - before
        counts.append(np.minimum(starts + k, size) - np.maximum(starts, 0))
    inside = np.outer(counts[0], counts[1])
    if (inside <= 0).any():
        raise ctx.fail(f"a window lies wholly in the padding {list(pairs)}, and count_include_pad=0 leaves it nothing to average")
    return (math.prod(kernel) / inside).astype(np.float32).reshape(1, *inside.shape, 1)


def _check_ceil_mode_is_floor(ctx: EmitContext, x: str, kernel: Sequence[int], stride: Sequence[int], pads: Sequence[int] | None) -> None:
    p = ints(pads, 0, 4)
    for i, size in enumerate(spatial_sizes(ctx, x)):
        span = size + p[i] + p[i + 2] - kernel[i]
        if math.ceil(span / stride[i]) != span // stride[i]:
            raise ctx.fail("ceil_mode=1 is supported only where it gives the same output size as ceil_mode=0")


@onnx_op()
def MaxPool(  # noqa: N802
    ctx: EmitContext,
    node: OnnxNode,
    *,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    dilations: tuple[int, ...] | None = None,
    kernel_shape: tuple[int, ...] | None = None,
    pads: tuple[int, ...] | None = None,
    storage_order: int = 0,
    strides: tuple[int, ...] | None = None,
) -> None:
    del storage_order  # only affects the Indices output, which is rejected
    if dilations and any(d != 1 for d in dilations):
        raise ctx.fail(f"dilated pooling (dilations {dilations}) is not supported")
    _pool(ctx, node, BuiltinOperator.MAX_POOL_2D, kernel_shape, strides, pads, auto_pad, ceil_mode, LOWEST_FLOAT32)


@onnx_op()
def AveragePool(  # noqa: N802
    ctx: EmitContext,
    node: OnnxNode,
    *,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    count_include_pad: int = 0,
    dilations: tuple[int, ...] | None = None,
    kernel_shape: tuple[int, ...] | None = None,
    pads: tuple[int, ...] | None = None,
    strides: tuple[int, ...] | None = None,
) -> None:
    if dilations and any(d != 1 for d in dilations):
        raise ctx.fail(f"dilated pooling (dilations {dilations}) is not supported")
    pad_value = 0.0 if count_include_pad else None
    _pool(ctx, node, BuiltinOperator.AVERAGE_POOL_2D, kernel_shape, strides, pads, auto_pad, ceil_mode, pad_value)


def _reduce(ctx: EmitContext, node: OnnxNode, opcode: int, axes: Sequence[int], keepdims: bool, layout: Layout | None = None) -> None:
    x, y = node.inputs[0], node.outputs[0]
    rank = ctx.rank(x)
    normalised = sorted({a + rank if a < 0 else a for a in axes})
    if not normalised or normalised[0] == 0 or normalised[-1] >= rank:
        raise ctx.fail(f"reducing over axes {list(axes)} of a rank-{rank} tensor: the batch axis 0 must stay and every axis must exist")
    source = ctx.data(x, layout)
    current = ctx.layout(x) if layout is None else layout
    tfl_axes = ctx.constant(f"{y}/axes", sorted(axis_in(current, a) for a in normalised), np.int32)
    if keepdims:
        out_layout = current
    else:
        kept = [a for a in current if a not in normalised]
        out_layout = tuple(sorted(kept).index(a) for a in kept)
    ctx.op(opcode, [source, tfl_axes], [ctx.output(y, out_layout)], Options("ReducerOptions", {"KeepDims": keepdims}))


@onnx_op()
def GlobalAveragePool(ctx: EmitContext, node: OnnxNode) -> None:  # noqa: N802
    rank = ctx.rank(node.inputs[0])
    _reduce(ctx, node, BuiltinOperator.MEAN, range(2, rank), keepdims=True, layout=channels_last(rank))


@onnx_op()
def GlobalMaxPool(ctx: EmitContext, node: OnnxNode) -> None:  # noqa: N802
    rank = ctx.rank(node.inputs[0])
    _reduce(ctx, node, BuiltinOperator.REDUCE_MAX, range(2, rank), keepdims=True, layout=channels_last(rank))


@onnx_op()
def ReduceMean(  # noqa: N802
    ctx: EmitContext, node: OnnxNode, *, axes: tuple[int, ...] | None = None, keepdims: int = 1, noop_with_empty_axes: int = 0
) -> None:
    given = ctx.optional_const(node, 1, "axes")  # opset 18 moved axes to an input
    chosen = tuple(int(a) for a in given.reshape(-1)) if given is not None else axes
    if not chosen:
        if noop_with_empty_axes:
            ctx.alias(node.outputs[0], node.inputs[0])
            return
        chosen = tuple(range(ctx.rank(node.inputs[0])))  # every axis, which _reduce rejects for the batch
    _reduce(ctx, node, BuiltinOperator.MEAN, chosen, bool(keepdims))
