"""Per-op parity of the TFLite emitter: tiny graphs built inline with onnx.helper, run on
onnxruntime and, emitted as .tflite, on LiteRT; outputs agree to 1e-5 of their scale.

Every op in the emitter's registry appears in at least one case (checked below), in
the layouts it meets in real models: after a conv (NHWC inside TFLite) and on 2-D data.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from helpers.parity import assert_close, run_onnx, run_tflite, tflite_ops
from onnx import TensorProto, helper, numpy_helper
from s2conv.tflite import onnx_to_tflite, supported_ops
from s2rt.errors import UnsupportedGraphError, UnsupportedOpError

BATCH = 3


class G:
    """Collects nodes and seeded random initialisers for one test graph."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray | list) -> str:
        array = np.asarray(value)
        self.inits.append(numpy_helper.from_array(array.astype(np.float32) if array.dtype == np.float64 else array, name))
        return name

    def w(self, name: str, *shape: int) -> str:
        return self.const(name, self.rng.normal(0, 0.5, size=shape).astype(np.float32))

    def n(self, op: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{op.lower()}_{output}", **attrs))
        return output

    def conv(self, x: str, c_in: int, c_out: int, out: str, k: int = 3, group: int = 1, bias: bool = True, **attrs: object) -> str:
        inputs = [x, self.w(f"{out}.w", c_out, c_in // group, k, k)]
        if bias:
            inputs.append(self.w(f"{out}.b", c_out))
        return self.n("Conv", inputs, out, group=group, **attrs)

    def bn(self, x: str, c: int, out: str) -> str:
        scale = self.const(f"{out}.scale", self.rng.uniform(0.5, 1.5, c))
        bias = self.const(f"{out}.bias", self.rng.normal(0, 0.5, c))
        mean = self.const(f"{out}.mean", self.rng.normal(0, 0.5, c))
        var = self.const(f"{out}.var", self.rng.uniform(0.5, 2.0, c))
        return self.n("BatchNormalization", [x, scale, bias, mean, var], out, epsilon=1e-3)

    def model(self, input_shape: tuple[int, ...], outputs: list[str], opset: int = 17, check: bool = True) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "t",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape])],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            initializer=self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8 if opset <= 17 else 9
        if check:
            model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
            onnx.checker.check_model(model)
        return model


Case = tuple[onnx.ModelProto, tuple[int, ...]]
CASES: dict[str, Callable[[], Case]] = {}


def case(fn: Callable[[], Case]) -> Callable[[], Case]:
    CASES[fn.__name__] = fn
    return fn


# --- dense ---------------------------------------------------------------------------------


@case
def gemm_transb_alpha_beta() -> Case:
    g = G()
    g.n("Gemm", ["x", g.w("W", 5, 6), g.w("C", 5)], "y", transB=1, alpha=0.5, beta=2.0)
    return g.model((6,), ["y"]), (6,)


@case
def gemm_no_bias_relu() -> Case:
    g = G()
    g.n("Relu", [g.n("Gemm", ["x", g.w("W", 6, 4)], "h")], "y")
    return g.model((6,), ["y"]), (6,)


@case
def gemm_row_bias_then_tanh() -> Case:
    g = G()
    g.n("Tanh", [g.n("Gemm", ["x", g.w("W", 6, 4), g.w("C", 1, 4)], "h")], "y")
    return g.model((6,), ["y"]), (6,)


@case
def matmul_add_bias() -> Case:
    g = G()
    g.n("Add", [g.w("b", 4), g.n("MatMul", ["x", g.w("W", 6, 4)], "h")], "y")
    return g.model((6,), ["y"]), (6,)


@case
def matmul_3d_input() -> Case:
    g = G()
    g.n("MatMul", ["x", g.w("W", 6, 4)], "y")
    return g.model((5, 6), ["y"]), (5, 6)


@case
def gemm_batchnorm_sigmoid() -> Case:
    g = G()
    g.n("Sigmoid", [g.bn(g.n("Gemm", ["x", g.w("W", 4, 6), g.w("C", 4)], "h", transB=1), 4, "bn")], "y")
    return g.model((6,), ["y"]), (6,)


# --- convolutions ---------------------------------------------------------------------------


@case
def conv_same_pads() -> Case:
    g = G()
    g.conv("x", 3, 4, "y", pads=[1, 1, 1, 1])
    return g.model((3, 8, 8), ["y"]), (3, 8, 8)


@case
def conv_stride2_explicit_pads() -> Case:
    g = G()
    g.conv("x", 3, 4, "y", pads=[1, 1, 1, 1], strides=[2, 2])  # not TF's SAME: a PAD first
    return g.model((3, 8, 8), ["y"]), (3, 8, 8)


@case
def conv_asymmetric_pads_dilated_no_bias() -> Case:
    g = G()
    g.conv("x", 2, 3, "y", bias=False, pads=[0, 2, 1, 0], dilations=[2, 2])
    return g.model((2, 9, 7), ["y"]), (2, 9, 7)


@case
def conv_auto_pad_modes() -> Case:
    g = G()
    a = g.conv("x", 2, 3, "a", auto_pad="SAME_UPPER", strides=[2, 2])
    b = g.conv("x", 2, 3, "b", auto_pad="SAME_LOWER", strides=[2, 2])
    c = g.conv("x", 2, 3, "c", auto_pad="VALID", k=2)
    return g.model((2, 7, 7), [a, b, c]), (2, 7, 7)


@case
def conv_1x1_valid_single_channel_input() -> Case:
    g = G()
    g.conv("x", 1, 4, "y", k=1)  # 1-channel NCHW input: a RESHAPE to NHWC, no TRANSPOSE
    return g.model((1, 8, 8), ["y"]), (1, 8, 8)


@case
def depthwise_conv() -> Case:
    g = G()
    g.conv("x", 4, 4, "y", group=4, pads=[1, 1, 1, 1])
    return g.model((4, 6, 6), ["y"]), (4, 6, 6)


@case
def depthwise_conv_multiplier_2_stride_2() -> Case:
    g = G()
    g.conv("x", 3, 6, "y", group=3, pads=[1, 1, 1, 1], strides=[2, 2])
    return g.model((3, 8, 8), ["y"]), (3, 8, 8)


@case
def conv_bn_relu_folded() -> Case:
    g = G()
    g.n("Relu", [g.bn(g.conv("x", 3, 4, "c", pads=[1, 1, 1, 1]), 4, "bn")], "y")
    return g.model((3, 6, 6), ["y"]), (3, 6, 6)


@case
def depthwise_bn_clip_relu6() -> Case:
    g = G()
    bn = g.bn(g.conv("x", 4, 4, "c", group=4, bias=False, pads=[1, 1, 1, 1]), 4, "bn")
    g.n("Clip", [bn, g.const("lo", np.float32(0)), g.const("hi", np.float32(6))], "y")
    return g.model((4, 6, 6), ["y"]), (4, 6, 6)


@case
def batchnorm_on_input() -> Case:
    g = G()
    g.bn("x", 3, "y")  # nothing to fold into: MUL + ADD
    return g.model((3, 4, 4), ["y"]), (3, 4, 4)


@case
def conv_tap_and_bn() -> Case:
    g = G()
    c = g.conv("x", 3, 4, "c", pads=[1, 1, 1, 1])
    g.bn(c, 4, "y")  # the conv output is also an output: the BN must not fold into it
    return g.model((3, 5, 5), [c, "y"]), (3, 5, 5)


# --- pools and reductions -------------------------------------------------------------------


@case
def maxpool_2x2() -> Case:
    g = G()
    g.n("MaxPool", [g.conv("x", 2, 3, "c", pads=[1, 1, 1, 1])], "y", kernel_shape=[2, 2], strides=[2, 2])
    return g.model((2, 8, 8), ["y"]), (2, 8, 8)


@case
def maxpool_3x3_pads_and_same() -> Case:
    g = G()
    a = g.n("MaxPool", ["x"], "a", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    b = g.n("MaxPool", ["x"], "b", kernel_shape=[3, 3], strides=[1, 1], auto_pad="SAME_UPPER")
    return g.model((2, 7, 7), [a, b]), (2, 7, 7)


@case
def averagepool_variants() -> Case:
    g = G()
    a = g.n("AveragePool", ["x"], "a", kernel_shape=[2, 2], strides=[2, 2])
    b = g.n("AveragePool", ["x"], "b", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    c = g.n("AveragePool", ["x"], "c", kernel_shape=[3, 3], pads=[1, 1, 1, 1])  # SAME, padding not counted
    return g.model((2, 6, 6), [a, b, c]), (2, 6, 6)


@case
def averagepool_uncounted_padding_that_is_not_same() -> Case:
    """count_include_pad=0 with padding TFLite's SAME does not give: pad, pool, rescale."""
    g = G()
    a = g.n("AveragePool", ["x"], "a", kernel_shape=[3, 3], pads=[2, 0, 1, 2])
    b = g.n("AveragePool", ["x"], "b", kernel_shape=[2, 3], strides=[2, 1], auto_pad="SAME_LOWER")
    r = g.n("Relu", [g.n("AveragePool", ["x"], "c", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])], "r")
    return g.model((2, 7, 6), [a, b, r]), (2, 7, 6)


@case
def global_pools_flatten_gemm() -> Case:
    g = G()
    c = g.conv("x", 3, 4, "c", pads=[1, 1, 1, 1])
    avg = g.n("Flatten", [g.n("GlobalAveragePool", [c], "gap")], "avg")
    top = g.n("Flatten", [g.n("GlobalMaxPool", [c], "gmp")], "top")
    g.n("Gemm", [avg, g.w("W", 5, 4), g.w("b", 5)], "y", transB=1)
    return g.model((3, 6, 6), [top, "y"]), (3, 6, 6)


@case
def reducemean_attr_keepdims() -> Case:
    g = G()
    c = g.conv("x", 3, 4, "c", pads=[1, 1, 1, 1])
    a = g.n("ReduceMean", [c], "a", axes=[2, 3], keepdims=0)
    b = g.n("ReduceMean", [c], "b", axes=[-1], keepdims=1)
    return g.model((3, 5, 5), [a, b], opset=17), (3, 5, 5)


@case
def reducemean_axes_input_opset18() -> Case:
    g = G()
    c = g.conv("x", 3, 4, "c", pads=[1, 1, 1, 1])
    g.n("ReduceMean", [c, g.const("axes", np.array([2, 3], np.int64))], "y", keepdims=0)
    return g.model((3, 5, 5), ["y"], opset=18), (3, 5, 5)


# --- shapes -----------------------------------------------------------------------------


@case
def flatten_feature_map() -> Case:
    g = G()
    f = g.n("Flatten", [g.conv("x", 2, 3, "c", pads=[1, 1, 1, 1])], "f")  # NCHW order: one TRANSPOSE back
    g.n("Gemm", [f, g.w("W", 4, 48), g.w("b", 4)], "y", transB=1)
    return g.model((2, 4, 4), [f, "y"]), (2, 4, 4)


@case
def reshape_constant_and_torch_view() -> Case:
    g = G()
    c = g.conv("x", 2, 3, "c", pads=[1, 1, 1, 1])
    a = g.n("Reshape", [c, g.const("shape", np.array([-1, 6, 4], np.int64))], "a")
    shape = g.n("Shape", [c], "shape_of_c")
    batch = g.n("Gather", [shape, g.const("zero", np.array(0, np.int64))], "batch", axis=0)
    batch_1d = g.n("Unsqueeze", [batch, g.const("ax0", np.array([0], np.int64))], "b1")
    dims = g.n("Concat", [batch_1d, g.const("m1", np.array([-1], np.int64))], "dims", axis=0)
    b = g.n("Reshape", [c, dims], "b")
    return g.model((2, 4, 2), [a, b]), (2, 4, 2)


@case
def squeeze_unsqueeze() -> Case:
    g = G()
    gap = g.n("GlobalAveragePool", [g.conv("x", 2, 3, "c")], "gap")
    s = g.n("Squeeze", [gap, g.const("axes", np.array([2, 3], np.int64))], "s")
    g.n("Unsqueeze", [g.n("Relu", [s], "r"), g.const("axes1", np.array([1], np.int64))], "y")
    return g.model((2, 5, 5), [s, "y"]), (2, 5, 5)


@case
def concat_channels_and_features() -> Case:
    g = G()
    a = g.conv("x", 2, 3, "a", pads=[1, 1, 1, 1])
    b = g.conv("x", 2, 2, "b", k=1)
    cat = g.n("Concat", [a, b], "cat", axis=1)
    flat = g.n("Flatten", [g.n("GlobalAveragePool", [cat], "gap")], "flat")
    g.n("Concat", [flat, g.n("Sigmoid", [flat], "sig")], "y", axis=-1)
    return g.model((2, 4, 4), [cat, "y"]), (2, 4, 4)


@case
def pad_modes() -> Case:
    g = G()
    c = g.conv("x", 2, 3, "c", pads=[1, 1, 1, 1])
    a = g.n("Pad", [c, g.const("p1", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))], "a")
    b = g.n("Pad", [c, g.const("p2", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), g.const("v", np.float32(1.5))], "b")
    r = g.n("Pad", [c, g.const("p3", np.array([0, 0, 2, 1, 0, 0, 1, 2], np.int64))], "r", mode="reflect")
    return g.model((2, 5, 5), [a, b, r]), (2, 5, 5)


@case
def pad_2d_features() -> Case:
    g = G()
    g.n("Pad", ["x", g.const("p", np.array([0, 2, 0, 1], np.int64))], "y")
    return g.model((5,), ["y"]), (5,)


# --- activations -----------------------------------------------------------------------------


@case
def activations_on_feature_maps() -> Case:
    g = G()
    c = g.conv("x", 2, 3, "c", pads=[1, 1, 1, 1])
    outs = [
        g.n("Relu", [c], "relu"),
        g.n("Clip", [c, g.const("lo", np.float32(-0.5)), g.const("hi", np.float32(0.7))], "clip"),
        g.n("Clip", [c, g.const("zero", np.float32(0))], "clip_relu"),
        g.n("Sigmoid", [c], "sigmoid"),
        g.n("Tanh", [c], "tanh"),
        g.n("LeakyRelu", [c], "leaky", alpha=0.1),
        g.n("HardSigmoid", [c], "hsig", alpha=0.25, beta=0.4),
        g.n("HardSwish", [c], "hswish"),
    ]
    return g.model((2, 4, 4), outs), (2, 4, 4)


@case
def activations_fused_chain() -> Case:
    g = G()
    fc = g.n("Gemm", ["x", g.w("W", 5, 6)], "h", transB=1)
    h = g.n("Clip", [fc, g.const("lo", np.float32(-1)), g.const("hi", np.float32(1))], "clip")
    g.n("HardSigmoid", [g.n("LeakyRelu", [h], "leaky")], "y")
    return g.model((6,), ["y"]), (6,)


@case
def activations_after_pools_binaries_concat() -> Case:
    g = G()
    outs = [
        g.n("Relu", [g.n("MaxPool", ["x"], "mp", kernel_shape=[2, 2])], "mp_relu"),
        g.n("Relu", [g.n("AveragePool", ["x"], "ap", kernel_shape=[2, 2])], "ap_relu"),
        g.n("Relu", [g.n("Mul", ["x", "x"], "sq")], "sq_relu"),
        g.n("Relu", [g.n("Div", ["x", g.const("d", np.float32(-2))], "div")], "div_relu"),
        g.n("Relu", [g.n("Sub", ["x", g.const("s", np.float32(0.1))], "sub")], "sub_relu"),
        g.n("Relu", [g.n("Concat", ["x", "x"], "cat", axis=1)], "cat_relu"),  # CONCATENATION ignores a fused activation
    ]
    return g.model((3, 4, 4), outs), (3, 4, 4)


@case
def softmax_logsoftmax() -> Case:
    g = G()
    z = g.n("Gemm", ["x", g.w("W", 5, 6)], "z", transB=1)
    g.n("Softmax", [z], "p", axis=-1)
    g.n("LogSoftmax", [z], "lp")
    return g.model((6,), ["p", "lp"], opset=13), (6,)


@case
def softmax_over_channels() -> Case:
    g = G()
    g.n("Softmax", [g.conv("x", 2, 4, "c", pads=[1, 1, 1, 1])], "y", axis=1)  # the last axis in NHWC
    return g.model((2, 3, 3), ["y"]), (2, 3, 3)


# --- arithmetic and blocks of real CNNs ------------------------------------------------------


@case
def arithmetic_with_constants() -> Case:
    g = G()
    c = g.conv("x", 2, 3, "c", pads=[1, 1, 1, 1])
    r = g.n("Relu", [c], "r")  # r is not a conv output: the constants stay ops
    per_channel = g.const("k", np.array([[[0.5]], [[2.0]], [[-1.0]]], np.float32))
    outs = [
        g.n("Add", [r, per_channel], "add"),
        g.n("Sub", [g.const("s", np.float32(1.0)), r], "rsub"),
        g.n("Mul", [r, g.const("row", np.array([1.0, 2.0, 3.0, 4.0], np.float32))], "mul_w"),
        g.n("Div", [r, per_channel], "div"),
    ]
    return g.model((2, 4, 4), outs), (2, 4, 4)


@case
def standardise_input_then_gemm() -> Case:
    g = G()  # HAR's input standardisation: Sub, Div with constants
    z = g.n("Div", [g.n("Sub", ["x", g.w("mean", 6)], "centred"), g.const("std", np.linspace(0.5, 2, 6))], "z")
    g.n("Gemm", [z, g.w("W", 3, 6), g.w("b", 3)], "y", transB=1)
    return g.model((6,), [z, "y"]), (6,)


@case
def conv_bias_and_scale_folded() -> Case:
    g = G()
    c = g.conv("x", 2, 3, "c", bias=False, pads=[1, 1, 1, 1])
    m = g.n("Mul", [c, g.const("scale", np.array([[[0.5]], [[2.0]], [[-1.0]]], np.float32))], "m")
    g.n("Relu", [g.n("Sub", [m, g.const("shift", np.array([[[0.1]], [[0.2]], [[0.3]]], np.float32))], "s")], "y")
    return g.model((2, 4, 4), ["y"]), (2, 4, 4)


@case
def residual_block() -> Case:
    g = G()
    a = g.n("Relu", [g.bn(g.conv("x", 3, 3, "c1", bias=False, pads=[1, 1, 1, 1]), 3, "bn1")], "a")
    b = g.bn(g.conv(a, 3, 3, "c2", bias=False, pads=[1, 1, 1, 1]), 3, "bn2")
    g.n("Relu", [g.n("Add", [b, "x"], "sum")], "y")
    return g.model((3, 5, 5), ["y"]), (3, 5, 5)


@case
def squeeze_excite_conv() -> Case:
    g = G()
    x = g.n("HardSwish", [g.conv("x", 3, 4, "c", pads=[1, 1, 1, 1])], "f")
    s = g.n("Relu", [g.conv(g.n("GlobalAveragePool", [x], "gap"), 4, 2, "se1", k=1)], "se_r")
    gate = g.n("HardSigmoid", [g.conv(s, 2, 4, "se2", k=1)], "gate", alpha=1 / 6, beta=0.5)
    g.n("Mul", [x, gate], "y")
    return g.model((3, 6, 6), ["y"]), (3, 6, 6)


@case
def squeeze_excite_fc() -> Case:
    g = G()
    x = g.conv("x", 3, 4, "c", pads=[1, 1, 1, 1])
    pooled = g.n("Flatten", [g.n("GlobalAveragePool", [x], "gap")], "pooled")
    hidden = g.n("Relu", [g.n("Gemm", [pooled, g.w("W1", 2, 4)], "fc1", transB=1)], "r")
    s = g.n("Sigmoid", [g.n("Gemm", [hidden, g.w("W2", 4, 2)], "fc2", transB=1)], "s")
    gate = g.n("Reshape", [s, g.const("shape", np.array([-1, 4, 1, 1], np.int64))], "gate")
    g.n("Mul", [x, gate], "y")
    return g.model((3, 5, 5), ["y"]), (3, 5, 5)


@case
def passthrough_ops() -> Case:
    g = G()
    g.nodes.append(helper.make_node("Dropout", [g.n("Identity", ["x"], "i")], ["d", "unused_mask"], name="dropout"))
    h = "d"
    g.n("Cast", [g.n("Relu", [h], "r")], "y", to=TensorProto.FLOAT)
    return g.model((4,), [h, "y"]), (4,)


@pytest.mark.parametrize("name", sorted(CASES))
def test_tflite_matches_onnxruntime(name):
    model, shape = CASES[name]()
    data = onnx_to_tflite(model)
    x = np.random.default_rng(1).normal(size=(BATCH, *shape)).astype(np.float32)
    assert_close(run_tflite(data, x), run_onnx(model, x))


def test_every_registered_op_has_a_parity_case():
    covered = {node.op_type for build in CASES.values() for node in build()[0].graph.node}
    assert set(supported_ops()) <= covered, sorted(set(supported_ops()) - covered)


# --- what the emitter writes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("matmul_add_bias", ["FULLY_CONNECTED"]),  # the Add became the FC's bias
        ("gemm_no_bias_relu", ["FULLY_CONNECTED"]),  # Relu fused
        ("gemm_batchnorm_sigmoid", ["FULLY_CONNECTED", "LOGISTIC"]),  # BN folded into the weights
        ("conv_bn_relu_folded", ["TRANSPOSE", "CONV_2D", "TRANSPOSE"]),  # NCHW in, BN + Relu folded, NCHW out
        ("depthwise_bn_clip_relu6", ["TRANSPOSE", "DEPTHWISE_CONV_2D", "TRANSPOSE"]),
        ("conv_bias_and_scale_folded", ["TRANSPOSE", "CONV_2D", "TRANSPOSE"]),
        ("conv_1x1_valid_single_channel_input", ["RESHAPE", "CONV_2D", "TRANSPOSE"]),
        ("conv_tap_and_bn", ["TRANSPOSE", "CONV_2D", "MUL", "ADD", "TRANSPOSE", "TRANSPOSE"]),
    ],
)
def test_folding_and_layout(name, expected):
    model, _ = CASES[name]()
    assert tflite_ops(onnx_to_tflite(model)) == expected


def test_squeeze_excite_runs_channels_last_throughout():
    model, _ = CASES["squeeze_excite_conv"]()
    ops = tflite_ops(onnx_to_tflite(model))
    assert ops.count("TRANSPOSE") == 2, ops  # the input, and the output back to NCHW
    assert "HARD_SWISH" in ops and "MEAN" in ops and ops.count("CONV_2D") == 3


def test_outputs_keep_their_onnx_names():
    model, shape = CASES["global_pools_flatten_gemm"]()
    out = run_tflite(onnx_to_tflite(model), np.zeros((2, *shape), np.float32))
    assert sorted(out) == ["top", "y"]


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_any_batch_size(batch):
    model, shape = CASES["residual_block"]()
    x = np.random.default_rng(batch).normal(size=(batch, *shape)).astype(np.float32)
    assert_close(run_tflite(onnx_to_tflite(model), x), run_onnx(model, x))


# --- what it refuses --------------------------------------------------------------------


def test_unsupported_op_names_op_node_and_supported_list():
    g = G()
    g.n("Erf", [g.n("Relu", ["x"], "r")], "y")
    with pytest.raises(UnsupportedOpError) as e:
        onnx_to_tflite(g.model((4,), ["y"]))
    message = str(e.value)
    assert "op Erf in node 'erf_y' (Erf)" in message
    assert "Supported ops: " + ", ".join(supported_ops()) in message


def test_every_unsupported_node_is_listed():
    g = G()
    g.n("Cos", [g.n("Sin", ["x"], "s")], "y")
    with pytest.raises(UnsupportedOpError, match=r"op Sin in node 'sin_s' \(Sin\); op Cos in node 'cos_y'"):
        onnx_to_tflite(g.model((4,), ["y"]))


def test_unused_unsupported_op_is_fine():
    g = G()
    g.n("Erf", ["x"], "unused")  # not on the way to an output
    g.n("Relu", ["x"], "y")
    model = g.model((4,), ["y"])
    x = np.ones((2, 4), np.float32)
    assert_close(run_tflite(onnx_to_tflite(model), x), {"y": np.ones((2, 4), np.float32)})


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda g: g.conv("x", 4, 4, "y", group=2), "grouped convolution with group=2"),
        (lambda g: g.n("MatMul", ["x", "x"], "y"), "must be a constant"),
        (lambda g: g.n("AveragePool", ["x"], "y", kernel_shape=[3, 3], pads=[0, 0, 3, 3]), "a window lies wholly in the padding"),
        (lambda g: g.n("AveragePool", ["x"], "y", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), "ceil_mode=1 is supported only"),
        (lambda g: g.n("Concat", ["x", "x"], "y", axis=0), "batch axis"),
        (lambda g: g.n("Reshape", ["x", g.const("s", np.array([-1, 48, 6], np.int64))], "y"), "moves samples across the batch"),
        (lambda g: g.n("LpNormalization", ["x"], "y"), "no handler"),
    ],
)
def test_clear_errors(build, message):
    g = G()
    build(g)
    with pytest.raises((UnsupportedGraphError, UnsupportedOpError), match=message):
        onnx_to_tflite(g.model((4, 6, 6), ["y"]))


def test_attribute_without_a_handler_parameter_is_named():
    g = G()
    g.n("Relu", ["x"], "y", unknown_attr=1)
    with pytest.raises(UnsupportedGraphError, match="node 'relu_y' \\(Relu\\): attribute unknown_attr is not supported"):
        onnx_to_tflite(g.model((4,), ["y"], check=False))


def _dropout(g: G, ratio: float | None, training_mode: bool | str) -> str:
    """Dropout (opset 13 inputs) on Relu(x); training_mode a constant, or the name of a tensor."""
    training = training_mode if isinstance(training_mode, str) else g.const("training", np.array(training_mode))
    ratio_name = g.const("ratio", np.array(ratio, np.float32)) if ratio is not None else ""
    g.nodes.append(helper.make_node("Dropout", [g.n("Relu", ["x"], "r"), ratio_name, training], ["y"], name="drop"))
    return "y"


@pytest.mark.parametrize(("ratio", "shown"), [(0.25, "0.25"), (None, "0.5")])
def test_a_training_mode_dropout_is_refused_not_passed_through(ratio, shown):
    g = G()
    _dropout(g, ratio, True)
    with pytest.raises(UnsupportedGraphError, match=rf"node 'drop' \(Dropout\): training_mode is true, so it zeroes a random {shown} "):
        onnx_to_tflite(g.model((4,), ["y"]))


def test_a_dropout_whose_training_mode_depends_on_the_input_is_refused():
    g = G()
    flag = g.n("Cast", [g.n("ReduceMean", ["x"], "m", keepdims=0)], "flag", to=TensorProto.BOOL)
    _dropout(g, 0.25, flag)
    with pytest.raises(UnsupportedGraphError, match=r"node 'drop' \(Dropout\): its training_mode 'flag' must be a constant"):
        onnx_to_tflite(g.model((4,), ["y"], check=False))


@pytest.mark.parametrize(("ratio", "training_mode"), [(0.0, True), (0.25, False)])
def test_a_dropout_that_drops_nothing_is_the_identity(ratio, training_mode):
    g = G()
    _dropout(g, ratio, training_mode)
    model = g.model((4,), ["y"])
    x = np.random.default_rng(2).normal(size=(BATCH, 4)).astype(np.float32)
    assert_close(run_tflite(onnx_to_tflite(model), x), {"y": np.maximum(x, 0)})


def test_a_sequence_input_is_refused_clearly():
    sequence = helper.make_tensor_sequence_value_info("xs", TensorProto.FLOAT, [4])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["xs"], ["y"])],
        "t",
        [sequence],
        [helper.make_tensor_sequence_value_info("y", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedGraphError, match="input 'xs' is sequence, not a tensor; the TFLite segment takes one float32 tensor"):
        onnx_to_tflite(model)
