"""A tiny hand-built bundle for runtime tests: x -> Relu(x W0 + b0) -> (.) W1 + b1 = logits.

The frozen segment is written directly with onnx.helper (no converter), with the
segment's output names the runtime expects: the taps `s2l.tap.0` (x) and `s2l.tap.1`
(the hidden layer) and `s2l.logits`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from s2rt.bundle import (
    Bundle,
    DType,
    Head,
    InputSignature,
    Provenance,
    Segment,
    SegmentBackend,
    Tap,
    plan_cache_layout,
)


def tiny_weights(d_in: int = 6, d_hidden: int = 5, classes: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W0": rng.normal(size=(d_in, d_hidden)).astype(np.float32),
        "b0": rng.normal(size=d_hidden).astype(np.float32),
        "W1": rng.normal(size=(d_hidden, classes)).astype(np.float32),
        "b1": rng.normal(size=classes).astype(np.float32),
    }


def tiny_segment(w: dict[str, np.ndarray]) -> bytes:
    d_in, classes = w["W0"].shape[0], w["W1"].shape[1]
    nodes = [
        helper.make_node("Identity", ["x"], ["s2l.tap.0"]),
        helper.make_node("Gemm", ["x", "W0", "b0"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["h1"]),
        helper.make_node("Identity", ["h1"], ["s2l.tap.1"]),
        helper.make_node("Gemm", ["h1", "W1", "b1"], ["s2l.logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d_in])],
        [
            helper.make_tensor_value_info("s2l.tap.0", TensorProto.FLOAT, ["N", d_in]),
            helper.make_tensor_value_info("s2l.tap.1", TensorProto.FLOAT, ["N", w["W0"].shape[1]]),
            helper.make_tensor_value_info("s2l.logits", TensorProto.FLOAT, ["N", classes]),
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tiny_reference(w: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fused taps, logits) computed in NumPy."""
    h = np.maximum(x @ w["W0"] + w["b0"], 0)
    return np.concatenate([x, h], axis=1), h @ w["W1"] + w["b1"]


def tiny_bundle(
    w: dict[str, np.ndarray] | None = None, rank: int = 2, cache_dtype: DType = DType.FLOAT32, seed: int = 0
) -> Bundle:
    w = w if w is not None else tiny_weights()
    d_in, d_hidden = w["W0"].shape
    classes = w["W1"].shape[1]
    taps = (Tap("s2l.tap.0", "x", "gemm0", (d_in,)), Tap("s2l.tap.1", "h1", "gemm1", (d_hidden,)))
    rng = np.random.default_rng(seed)
    a_init = tuple((rng.uniform(-1, 1, size=(rank, t.size)) / np.sqrt(t.size)).astype(np.float32) for t in taps)
    return Bundle(
        provenance=Provenance("00" * 32, "tiny.onnx", "tests", "0", "2026-01-01T00:00:00+00:00", '{"rank": 2}'),
        input=InputSignature("x", (d_in,)),
        labels=tuple(f"class_{i}" for i in range(classes)),
        segments=(Segment(SegmentBackend.ONNX, tiny_segment(w), "x", "s2l.logits"),),
        taps=taps,
        head=Head(rank, 2.0 * rank, classes, a_init, seed=seed),
        cache=plan_cache_layout(taps, classes, cache_dtype),
    )
