"""deterministic: a frozen segment that is random or mixes a batch's samples is refused,
for every backend, naming the node; the inference forms convert and run as the source does."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conv_graphs import BATCH, GraphBuilder, random_input, run_original, run_segment
from helpers.parity import run_tflite
from onnx import TensorProto, helper, numpy_helper
from s2conv import convert
from s2conv.convert import ConvertOptions
from s2rt.bundle.model import SegmentBackend
from s2rt.errors import UnsupportedGraphError


def dropout_mlp(training_mode: bool | None, ratio: float | None = 0.3, constant_node: bool = False) -> onnx.ModelProto:
    """x [N, 4] → Gemm → Relu → Dropout(ratio, training_mode) → Gemm (logits); None leaves the input out."""
    g = GraphBuilder(5)
    g.gemm("x", 4, 6, "h", "fc0")
    g.node("Relu", ["h"], "r")
    inputs = ["r", "", ""]
    if ratio is not None:
        inputs[1] = g.const("drop.ratio", np.array(ratio, np.float32))
    if training_mode is not None and constant_node:
        value = numpy_helper.from_array(np.array(training_mode), "t")
        g.nodes.append(helper.make_node("Constant", [], ["drop.training"], name="training_const", value=value))
        inputs[2] = "drop.training"
    elif training_mode is not None:
        inputs[2] = g.const("drop.training", np.array(training_mode))
    g.node("Dropout", [name for name in inputs[: 3 if inputs[2] else 2 if inputs[1] else 1]], "d", name="drop")
    g.gemm("d", 6, 3, "logits", "fc1")
    return g.model([("x", [BATCH, 4], TensorProto.FLOAT)], [("logits", [BATCH, 3])], opset=13)


def save(model: onnx.ModelProto, tmp_path) -> str:
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return str(path)


@pytest.mark.parametrize("backend", ["onnx", "tflite", "both"])
@pytest.mark.parametrize("constant_node", [False, True])
def test_a_training_mode_dropout_is_refused_naming_the_node(tmp_path, backend, constant_node):
    path = save(dropout_mlp(training_mode=True, constant_node=constant_node), tmp_path)
    with pytest.raises(UnsupportedGraphError) as e:
        convert(path, ConvertOptions(backend=backend))
    message = str(e.value)
    assert "node 'drop' (Dropout) cannot be part of the frozen segment" in message
    assert "training_mode is true, so it zeroes a random 0.3 of its input" in message
    assert "model.eval()" in message


def test_a_training_mode_dropout_without_a_ratio_drops_half_and_is_refused(tmp_path):
    with pytest.raises(UnsupportedGraphError, match="a random 0.5 of its input"):
        convert(save(dropout_mlp(training_mode=True, ratio=None), tmp_path))


@pytest.mark.parametrize(
    ("training_mode", "ratio"),
    [(True, 0.0), (False, 0.3), (None, 0.3), (None, None)],
    ids=["training-ratio-0", "inference", "no-training-input", "no-inputs"],
)
def test_dropouts_that_drop_nothing_convert_and_match_the_source(tmp_path, training_mode, ratio):
    model = dropout_mlp(training_mode, ratio)
    bundle = convert(save(model, tmp_path), ConvertOptions(backend="both"))
    x = random_input((4,), 5)
    expected = run_original(model, x, ["logits"])["logits"]
    from_onnx = run_segment(bundle, x)["s2l.logits"]
    from_tflite = run_tflite(bytes(bundle.segment(SegmentBackend.TFLITE).model), x)["s2l.logits"]
    np.testing.assert_allclose(from_onnx, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(from_tflite, expected, rtol=1e-5, atol=1e-6)


def test_a_training_mode_batchnorm_is_refused(tmp_path):
    g = GraphBuilder(6)
    g.gemm("x", 4, 5, "h", "fc0")
    stats = [g.const(f"bn.{k}", np.full(5, v, np.float32)) for k, v in (("scale", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0))]
    g.nodes.append(helper.make_node("BatchNormalization", ["h", *stats], ["n", "run_mean", "run_var"], name="bn", training_mode=1))
    g.gemm("n", 5, 3, "logits", "fc1")
    model = g.model([("x", [BATCH, 4], TensorProto.FLOAT)], [("logits", [BATCH, 3])], opset=15)
    with pytest.raises(UnsupportedGraphError, match=r"node 'bn' \(BatchNormalization\) cannot .* mixes the samples of a batch"):
        convert(save(model, tmp_path))


def test_a_random_op_in_the_segment_is_refused(tmp_path):
    g = GraphBuilder(7)
    g.node("RandomNormalLike", ["x"], "noise", name="noise", scale=0.1)
    g.node("Add", ["x", "noise"], "noisy", name="add_noise")
    g.gemm("noisy", 4, 3, "logits", "fc0")
    model = g.model([("x", [BATCH, 4], TensorProto.FLOAT)], [("logits", [BATCH, 3])])
    with pytest.raises(UnsupportedGraphError, match=r"node 'noise' \(RandomNormalLike\) cannot .* draws random numbers"):
        convert(save(model, tmp_path))


def test_a_random_node_outside_the_segment_does_not_matter(tmp_path):
    g = GraphBuilder(8)
    g.gemm("x", 4, 3, "logits", "fc0")
    g.node("RandomUniformLike", ["logits"], "unused", name="unused_noise")
    model = g.model([("x", [BATCH, 4], TensorProto.FLOAT)], [("logits", [BATCH, 3])])
    assert convert(save(model, tmp_path)).taps
