"""Tiny ONNX graphs built inline with `onnx.helper`, and the onnxruntime oracle.

Every builder returns a `Case`: the model plus what the tap finder should find in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from s2rt.bundle.model import Bundle, OutputActivation, SegmentBackend

OPSET = 17
IR_VERSION = 8  # onnx 1.23 writes IR 14 by default; onnxruntime 1.31 reads up to 13
BATCH = "N"
Dim = int | str


@dataclass
class Case:
    model: onnx.ModelProto
    taps: list[str]  # expected tap sources, input to last layer
    logits: str  # expected frozen logits tensor
    activation: OutputActivation = OutputActivation.NONE
    input_shape: tuple[int, ...] = ()
    layers: list[str] = field(default_factory=list)

    def save(self, directory: Path, name: str = "model.onnx") -> Path:
        path = directory / name
        onnx.save(self.model, path)
        return path


class GraphBuilder:
    """Collects nodes and random float32 initialisers; names everything."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], dtype: type = np.float32) -> str:
        return self.const(name, self.rng.normal(0, 0.5, size=shape).astype(dtype))

    def node(self, op: str, inputs: Sequence[str], output: str, name: str | None = None, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=name or f"{op.lower()}_{output}", **attrs))
        return output

    def gemm(self, x: str, d_in: int, d_out: int, out: str, name: str) -> str:
        w = self.weight(f"{name}.weight", (d_out, d_in))
        b = self.weight(f"{name}.bias", (d_out,))
        return self.node("Gemm", [x, w, b], out, name=name, transB=1)

    def matmul_add(self, x: str, d_in: int, d_out: int, out: str, name: str) -> str:
        w = self.weight(f"{name}.weight", (d_in, d_out))
        b = self.weight(f"{name}.bias", (d_out,))
        self.node("MatMul", [x, w], f"{out}_mm", name=name)
        return self.node("Add", [f"{out}_mm", b], out, name=f"{name}_bias")

    def model(
        self,
        inputs: Sequence[tuple[str, Sequence[Dim], int]],
        outputs: Sequence[tuple[str, Sequence[Dim]]],
        opset: int = OPSET,
    ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "test",
            [helper.make_tensor_value_info(n, t, list(s)) for n, s, t in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = IR_VERSION
        return model


def gemm_chain(dims: Sequence[int] = (6, 5, 4, 3), batch: Dim = BATCH, softmax: str | None = None) -> Case:
    """x → Gemm → Relu → Gemm → Relu → … → Gemm [→ Softmax/LogSoftmax]."""
    g = GraphBuilder()
    x, taps, layers = "x", [], []
    for i, (d_in, d_out) in enumerate(zip(dims, dims[1:])):
        taps.append(x)
        layers.append(f"fc{i}")
        x = g.gemm(x, d_in, d_out, f"h{i}", f"fc{i}")
        if i < len(dims) - 2:
            x = g.node("Relu", [x], f"r{i}")
    logits, activation = x, OutputActivation.NONE
    if softmax:
        x = g.node(softmax, [x], "probs", axis=-1)
        activation = OutputActivation[softmax.upper().replace("LOGSOFTMAX", "LOG_SOFTMAX")]
    model = g.model([("x", [batch, dims[0]], TensorProto.FLOAT)], [(x, [batch, dims[-1]])])
    return Case(model, taps, logits, activation, (dims[0],), layers)


def matmul_add_chain(dims: Sequence[int] = (5, 7, 4)) -> Case:
    """x → MatMul+Add → Tanh → MatMul+Add (logits)."""
    g = GraphBuilder(1)
    h = g.matmul_add("x", dims[0], dims[1], "h0", "mm0")
    t = g.node("Tanh", [h], "t0")
    out = g.matmul_add(t, dims[1], dims[2], "logits", "mm1")
    model = g.model([("x", [BATCH, dims[0]], TensorProto.FLOAT)], [(out, [BATCH, dims[2]])])
    return Case(model, ["x", "t0"], "logits", input_shape=(dims[0],), layers=["mm0", "mm1"])


def normalised_chain() -> Case:
    """x → Sub(mean) → Div(std) → Gemm → Sigmoid → Dropout → Gemm → Softmax."""
    g = GraphBuilder(2)
    g.node("Sub", ["x", g.const("mean", np.linspace(-1, 1, 4, dtype=np.float32))], "centred")
    g.node("Div", ["centred", g.const("std", np.linspace(0.5, 2, 4, dtype=np.float32))], "z")
    g.gemm("z", 4, 6, "h0", "fc0")
    g.node("Sigmoid", ["h0"], "s0")
    g.node("Dropout", ["s0"], "d0")
    g.gemm("d0", 6, 3, "logits", "fc1")
    g.node("Softmax", ["logits"], "probs", axis=1)
    model = g.model([("x", [BATCH, 4], TensorProto.FLOAT)], [("probs", [BATCH, 3])])
    return Case(model, ["z", "d0"], "logits", OutputActivation.SOFTMAX, (4,), ["fc0", "fc1"])


def passthrough_chain() -> Case:
    """x [N,1,2,4] → Flatten → Gemm → BatchNorm → LeakyRelu → Identity → Clip → Mul → Gemm
    → Identity → LogSoftmax → Identity."""
    g = GraphBuilder(3)
    g.node("Flatten", ["x"], "flat", axis=1)
    g.gemm("flat", 8, 5, "h0", "fc0")
    stats = [
        g.const(f"bn.{k}", v)
        for k, v in (
            ("scale", np.full(5, 1.5, np.float32)),
            ("bias", np.full(5, 0.1, np.float32)),
            ("mean", np.linspace(0, 1, 5, dtype=np.float32)),
            ("var", np.linspace(1, 2, 5, dtype=np.float32)),
        )
    ]
    g.node("BatchNormalization", ["h0", *stats], "bn0")
    g.node("LeakyRelu", ["bn0"], "a0", alpha=0.1)
    g.node("Identity", ["a0"], "i0")
    g.node("Clip", ["i0", g.const("lo", np.float32(-1)), g.const("hi", np.float32(1))], "c0")
    g.node("Mul", [g.const("gain", np.float32(2)), "c0"], "m0")
    g.gemm("m0", 5, 3, "logits", "fc1")
    g.node("Identity", ["logits"], "logits_id")
    g.node("LogSoftmax", ["logits_id"], "logp")
    g.node("Identity", ["logp"], "out")
    model = g.model([("x", [BATCH, 1, 2, 4], TensorProto.FLOAT)], [("out", [BATCH, 3])])
    return Case(model, ["flat", "m0"], "logits", OutputActivation.LOG_SOFTMAX, (1, 2, 4), ["fc0", "fc1"])


def double_chain() -> Case:
    """x → Cast(double) → Gemm (double weights) → Cast(float): the tap is a double tensor."""
    g = GraphBuilder(4)
    g.node("Cast", ["x"], "xd", to=TensorProto.DOUBLE)
    w = g.weight("fc0.weight", (3, 4), np.float64)
    g.node("Gemm", ["xd", w], "hd", name="fc0", transB=1)
    g.node("Cast", ["hd"], "h", to=TensorProto.FLOAT)
    g.gemm("h", 3, 2, "logits", "fc1")
    model = g.model([("x", [BATCH, 4], TensorProto.FLOAT)], [("logits", [BATCH, 2])])
    return Case(model, ["xd", "h"], "logits", input_shape=(4,), layers=["fc0", "fc1"])


def with_op_between(op: str = "Sin", name: str = "weird", domain: str = "") -> Case:
    """x → Gemm → <op> → Gemm: `op` (of `domain`) sits on the path between two layers."""
    g = GraphBuilder(5)
    g.gemm("x", 4, 4, "h0", "fc0")
    g.nodes.append(helper.make_node(op, ["h0"], ["u0"], name=name, domain=domain))
    g.gemm("u0", 4, 2, "logits", "fc1")
    model = g.model([("x", [BATCH, 4], TensorProto.FLOAT)], [("logits", [BATCH, 2])])
    if domain:
        model.opset_import.append(helper.make_opsetid(domain, 1))
    return Case(model, ["x", "u0"], "logits", input_shape=(4,))


def residual() -> Case:
    """x → Gemm → Relu → Add(·, x) → Gemm: a skip connection, not a single chain."""
    g = GraphBuilder(6)
    g.gemm("x", 4, 4, "h0", "fc0")
    g.node("Relu", ["h0"], "r0")
    g.node("Add", ["r0", "x"], "res", name="skip_add")
    g.gemm("res", 4, 2, "logits", "fc1")
    model = g.model([("x", [BATCH, 4], TensorProto.FLOAT)], [("logits", [BATCH, 2])])
    return Case(model, ["x", "res"], "logits", input_shape=(4,))


def two_inputs() -> onnx.ModelProto:
    g = GraphBuilder(7)
    g.node("Add", ["a", "b"], "s")
    g.gemm("s", 4, 2, "logits", "fc0")
    inputs = [("a", [BATCH, 4], TensorProto.FLOAT), ("b", [BATCH, 4], TensorProto.FLOAT)]
    return g.model(inputs, [("logits", [BATCH, 2])])


DIFFERENTIAL_CASES = {
    "gemm": gemm_chain,
    "gemm_fixed_batch": lambda: gemm_chain(batch=3),
    "gemm_softmax": lambda: gemm_chain(softmax="Softmax"),
    "single_layer": lambda: gemm_chain((5, 3)),
    "matmul_add": matmul_add_chain,
    "normalised": normalised_chain,
    "passthrough": passthrough_chain,
    "double": double_chain,
}


# --- the onnxruntime oracle ------------------------------------------------------------------


def _session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_original(model: onnx.ModelProto, x: np.ndarray, tensors: Sequence[str]) -> dict[str, np.ndarray]:
    """The source model's intermediate `tensors`, exposed as extra outputs, ORT optimisations off."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    extended = onnx.ModelProto()
    extended.CopyFrom(inferred)
    present = {o.name for o in extended.graph.output}
    extended.graph.output.extend(infos[name] for name in dict.fromkeys(tensors) if name not in present)
    session = _session(extended.SerializeToString())
    input_name = session.get_inputs()[0].name
    return dict(zip(tensors, session.run(list(tensors), {input_name: x})))


def run_segment(bundle: Bundle, x: np.ndarray) -> dict[str, np.ndarray]:
    segment = bundle.segment(SegmentBackend.ONNX)
    session = _session(bytes(segment.model))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {segment.input_name: x})))


def random_input(shape: Sequence[int], batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype(np.float32)
