"""Conv -> CONV_2D / DEPTHWISE_CONV_2D (weights transposed to TFLite's layouts at emit
time) and BatchNormalization, folded into the conv or FC before it when it can be."""

from __future__ import annotations

import numpy as np
from tflite.BuiltinOperator import BuiltinOperator

from s2conv.graph import OnnxNode
from s2conv.tflite.context import EmitContext
from s2conv.tflite.ir import Options
from s2conv.tflite.layout import axis_in, channels_last, constant_in
from s2conv.tflite.ops.common import ints, pad_spatial, spatial_padding, spatial_sizes
from s2conv.tflite.ops.fold import fold_affine
from s2conv.tflite.ops.registry import onnx_op


@onnx_op()
def Conv(  # noqa: N802
    ctx: EmitContext,
    node: OnnxNode,
    *,
    auto_pad: str = "NOTSET",
    dilations: tuple[int, ...] | None = None,
    group: int = 1,
    kernel_shape: tuple[int, ...] | None = None,
    pads: tuple[int, ...] | None = None,
    strides: tuple[int, ...] | None = None,
) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if ctx.rank(x) != 4:
        raise ctx.fail(f"only 2-D convolutions (4-D NCHW input) are supported, found a {ctx.rank(x)}-D input")
    w = ctx.const(node.inputs[1], "weight").astype(np.float32)
    bias = ctx.optional_const(node, 2, "bias")
    out_channels, in_per_group = w.shape[:2]
    in_channels = ctx.shape(x)[1]
    kernel = tuple(w.shape[2:])
    if kernel_shape and tuple(kernel_shape) != kernel:
        raise ctx.fail(f"kernel_shape {kernel_shape} does not match the weight's {kernel}")
    stride, dilation = ints(strides, 1, 2), ints(dilations, 1, 2)
    padding, explicit = spatial_padding(ctx, spatial_sizes(ctx, x), kernel, stride, dilation, pads, auto_pad)
    source = ctx.data(x, channels_last(4))
    if explicit is not None:
        source = pad_spatial(ctx, x, source, explicit)
    geometry = {
        "Padding": padding,
        "StrideH": stride[0],
        "StrideW": stride[1],
        "DilationHFactor": dilation[0],
        "DilationWFactor": dilation[1],
    }
    b = ctx.constant(f"{node.display_name}/bias", np.zeros(out_channels, np.float32) if bias is None else bias.astype(np.float32))
    if group == 1:
        filters = ctx.constant(f"{node.display_name}/filter", w.transpose(0, 2, 3, 1))  # OIHW -> OHWI
        out = ctx.output(y, channels_last(4))
        ctx.op(BuiltinOperator.CONV_2D, [source, filters, b], [out], Options("Conv2DOptions", geometry))
    elif group == in_channels and in_per_group == 1:
        filters = ctx.constant(f"{node.display_name}/filter", w.transpose(1, 2, 3, 0))  # M1HW -> 1HWM
        options = Options("DepthwiseConv2DOptions", {**geometry, "DepthMultiplier": out_channels // in_channels})
        out = ctx.output(y, channels_last(4))
        ctx.op(BuiltinOperator.DEPTHWISE_CONV_2D, [source, filters, b], [out], options)
    else:
        raise ctx.fail(
            f"grouped convolution with group={group} is not supported (only group=1, or depthwise: "
            f"group = input channels = {in_channels})"
        )


@onnx_op()
def BatchNormalization(  # noqa: N802
    ctx: EmitContext,
    node: OnnxNode,
    *,
    epsilon: float = 1e-5,
    momentum: float = 0.9,
    training_mode: int = 0,
    spatial: int = 1,
) -> None:
    del momentum  # only matters in training
    if training_mode or any(ctx.is_used(name) for name in node.outputs[1:]) or not spatial:
        raise ctx.fail("only inference-mode BatchNormalization (one output, spatial=1) is supported")
    x, y = node.inputs[0], node.outputs[0]
    roles = ("scale", "B", "input_mean", "input_var")
    gamma, beta, mean, var = (ctx.const(name, role).astype(np.float64) for name, role in zip(node.inputs[1:], roles))
    scale = gamma / np.sqrt(var + epsilon)
    shift = beta - mean * scale
    rank = ctx.rank(x)
    if rank >= 2 and axis_in(ctx.layout(x), 1) == rank - 1 and fold_affine(ctx, x, scale, shift):
        ctx.fold_into(y, x)
        return
    per_channel = [1] * rank
    per_channel[1] = -1
    layout = ctx.layout(x)
    s = ctx.constant(f"{node.display_name}/scale", constant_in(scale.astype(np.float32).reshape(per_channel), rank, layout))
    t = ctx.constant(f"{node.display_name}/shift", constant_in(shift.astype(np.float32).reshape(per_channel), rank, layout))
    source = ctx.tensor(ctx.data(x))
    scaled = ctx.temp(f"{y}/scaled", source.signature or source.shape)
    ctx.op(BuiltinOperator.MUL, [ctx.data(x), s], [scaled], Options("MulOptions"))
    ctx.op(BuiltinOperator.ADD, [scaled, t], [ctx.output(y, layout)], Options("AddOptions"))
