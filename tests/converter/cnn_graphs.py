"""Tiny CNN graphs built inline with `onnx.helper`: conv chains, ResNet basic and bottleneck
blocks, depthwise-separable convs, a MobileNetV3-style inverted residual with HardSwish
and squeeze-excite. Each is a `conv_graphs.Case` with the taps the finder should choose.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from conv_graphs import BATCH, Case, Dim, GraphBuilder
from onnx import TensorProto


class CnnBuilder(GraphBuilder):
    def conv(self, x: str, c_in: int, c_out: int, out: str, k: int = 3, stride: int = 1, group: int = 1) -> str:
        fan_in = c_in // group * k * k
        w = self.const(f"{out}.w", (self.rng.normal(size=(c_out, c_in // group, k, k)) / np.sqrt(fan_in)).astype(np.float32))
        b = self.weight(f"{out}.b", (c_out,))
        pads = [k // 2] * 4
        return self.node("Conv", [x, w, b], out, name=f"conv_{out}", kernel_shape=[k, k], strides=[stride, stride], pads=pads, group=group)

    def bn(self, x: str, c: int, out: str) -> str:
        stats = [
            self.const(f"{out}.scale", self.rng.uniform(0.5, 1.5, c).astype(np.float32)),
            self.const(f"{out}.bias", self.rng.normal(0, 0.1, c).astype(np.float32)),
            self.const(f"{out}.mean", self.rng.normal(0, 0.1, c).astype(np.float32)),
            self.const(f"{out}.var", self.rng.uniform(0.5, 1.5, c).astype(np.float32)),
        ]
        return self.node("BatchNormalization", [x, *stats], out)

    def head(self, x: str, c: int, classes: int) -> str:
        self.node("GlobalAveragePool", [x], "gap")
        self.node("Flatten", ["gap"], "flat", axis=1)
        return self.gemm("flat", c, classes, "logits", "classifier")

    def finish(self, input_shape: Sequence[int], classes: int, batch: Dim = BATCH, opset: int | None = None):
        kwargs = {} if opset is None else {"opset": opset}
        return self.model([("x", [batch, *input_shape], TensorProto.FLOAT)], [("logits", [batch, classes])], **kwargs)


def conv_chain(opset: int | None = None) -> Case:
    """x [1,8,8] → Conv → Relu → Conv(stride 2) → Relu → GlobalAveragePool → Flatten → Gemm."""
    g = CnnBuilder(10)
    g.conv("x", 1, 4, "c0")
    g.node("Relu", ["c0"], "r0")
    g.conv("r0", 4, 6, "c1", stride=2)
    g.node("Relu", ["c1"], "r1")
    g.head("r1", 6, 3)
    return Case(
        g.finish((1, 8, 8), 3, opset=opset),
        ["x", "r0", "flat"],
        "logits",
        input_shape=(1, 8, 8),
        layers=["conv_c0", "conv_c1", "classifier"],
    )


def basic_residual() -> Case:
    """ResNet basic block: stem Conv-BN-Relu, then [Conv-BN-Relu-Conv-BN] + identity → Relu."""
    g = CnnBuilder(11)
    g.bn(g.conv("x", 2, 4, "c0"), 4, "b0")
    g.node("Relu", ["b0"], "stem")
    g.bn(g.conv("stem", 4, 4, "c1"), 4, "b1")
    g.node("Relu", ["b1"], "r1")
    g.bn(g.conv("r1", 4, 4, "c2"), 4, "b2")
    g.node("Add", ["b2", "stem"], "sum", name="residual_add")
    g.node("Relu", ["sum"], "block1")
    g.head("block1", 4, 3)
    return Case(g.finish((2, 6, 6), 3), ["x", "stem", "flat"], "logits", input_shape=(2, 6, 6), layers=["conv_c0", "conv_c1", "classifier"])


def bottleneck() -> Case:
    """ResNet bottleneck with a projection shortcut: 1x1 reduce, 3x3, 1x1 expand, plus a strided 1x1 on the skip."""
    g = CnnBuilder(12)
    g.node("Relu", [g.conv("x", 3, 8, "c0")], "stem")
    g.node("Relu", [g.conv("stem", 8, 2, "red", k=1)], "r1")
    g.node("Relu", [g.conv("r1", 2, 2, "mid", stride=2)], "r2")
    g.conv("r2", 2, 8, "expand", k=1)
    g.conv("stem", 8, 8, "proj", k=1, stride=2)
    g.node("Add", ["expand", "proj"], "sum")
    g.node("Relu", ["sum"], "block1")
    g.head("block1", 8, 4)
    return Case(
        g.finish((3, 8, 8), 4), ["x", "stem", "flat"], "logits", input_shape=(3, 8, 8), layers=["conv_c0", "conv_red", "classifier"]
    )


def depthwise_separable() -> Case:
    """MobileNetV1: stem Conv → depthwise 3x3 (group = C) → BN → Relu → pointwise 1x1 → Relu."""
    g = CnnBuilder(13)
    g.node("Relu", [g.conv("x", 1, 4, "c0", stride=2)], "stem")
    g.bn(g.conv("stem", 4, 4, "dw", group=4), 4, "dwbn")
    g.node("Relu", ["dwbn"], "dwr")
    g.node("Relu", [g.conv("dwr", 4, 8, "pw", k=1)], "pwr")
    g.head("pwr", 8, 5)
    return Case(
        g.finish((1, 10, 10), 5),
        ["x", "stem", "dwr", "flat"],
        "logits",
        input_shape=(1, 10, 10),
        layers=["conv_c0", "conv_dw", "conv_pw", "classifier"],
    )


def inverted_residual_se(opset: int | None = None) -> Case:
    """MobileNetV3 block: expand 1x1 → HardSwish → depthwise 3x3 → HardSwish → squeeze-excite
    (GlobalAveragePool → 1x1 → Relu → 1x1 → HardSigmoid → Mul) → project 1x1, + identity."""
    g = CnnBuilder(14)
    g.node("HardSwish", [g.conv("x", 1, 4, "c0")], "stem")
    g.node("HardSwish", [g.conv("stem", 4, 12, "exp", k=1)], "e")
    g.node("HardSwish", [g.conv("e", 12, 12, "dw", group=12)], "d")
    g.node("GlobalAveragePool", ["d"], "squeeze")
    g.node("Relu", [g.conv("squeeze", 12, 3, "se1", k=1)], "se_r")
    g.node("HardSigmoid", [g.conv("se_r", 3, 12, "se2", k=1)], "gate", alpha=1 / 6, beta=0.5)
    g.node("Mul", ["d", "gate"], "excited")
    g.conv("excited", 12, 4, "proj", k=1)
    g.node("Add", ["stem", "proj"], "block1")
    g.head("block1", 4, 3)
    return Case(
        g.finish((1, 7, 7), 3, opset=opset),
        ["x", "stem", "flat"],
        "logits",
        input_shape=(1, 7, 7),
        layers=["conv_c0", "conv_exp", "classifier"],
    )


CNN_CASES = {
    "conv_chain": conv_chain,
    "basic_residual": basic_residual,
    "bottleneck": bottleneck,
    "depthwise_separable": depthwise_separable,
    "inverted_residual_se": inverted_residual_se,
}


def adaptive_avg_pool(x: np.ndarray, grid: int) -> np.ndarray:
    """torch's adaptive_avg_pool2d over the last two axes, written out from its window formula."""
    h, w = x.shape[-2:]
    gh, gw = min(grid, h), min(grid, w)
    out = np.empty((*x.shape[:-2], gh, gw), np.float64)
    for i in range(gh):
        for j in range(gw):
            rows = slice(i * h // gh, -(-(i + 1) * h // gh))
            cols = slice(j * w // gw, -(-(j + 1) * w // gw))
            out[..., i, j] = x[..., rows, cols].mean(axis=(-2, -1))
    return out
