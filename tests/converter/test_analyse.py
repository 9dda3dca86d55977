"""analyse: the tap finder on tiny inline graphs, and its errors."""

from __future__ import annotations

import onnx
import pytest
from conv_graphs import (
    BATCH,
    GraphBuilder,
    gemm_chain,
    matmul_add_chain,
    normalised_chain,
    passthrough_chain,
    residual,
    with_op_between,
)
from onnx import TensorProto
from s2conv.analyse import find_taps, input_signature
from s2conv.graph import view_graph
from s2rt.bundle.model import DType, OutputActivation
from s2rt.errors import UnsupportedGraphError


def view_of(model: onnx.ModelProto):
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return view_graph(model, model.graph.input[0].name, model.graph.output[0].name)


@pytest.mark.parametrize(
    "build",
    [gemm_chain, matmul_add_chain, normalised_chain, passthrough_chain, lambda: gemm_chain(softmax="LogSoftmax")],
    ids=["gemm", "matmul_add", "normalised", "passthrough", "log_softmax"],
)
def test_finds_layer_inputs_logits_and_activation(build):
    case = build()
    plan = find_taps(view_of(case.model))
    assert [t.source for t in plan.taps] == case.taps
    assert [t.layer for t in plan.taps] == case.layers
    assert [block.layer.name for block in plan.blocks] == case.layers
    assert plan.logits == case.logits
    assert plan.output_activation == case.activation


def test_tap_shapes_drop_the_batch_dimension_symbolic_or_fixed():
    for batch in (BATCH, 1, 7):
        plan = find_taps(view_of(gemm_chain((6, 5, 4, 3), batch=batch).model))
        assert [t.shape for t in plan.taps] == [(6,), (5,), (4,)]
        assert plan.num_outputs == 3


def test_first_tap_may_be_the_graph_input_and_matmul_bias_belongs_to_the_layer():
    plan = find_taps(view_of(matmul_add_chain().model))
    assert plan.taps[0].source == "x"
    assert [node.op for node in plan.blocks[-1].nodes] == ["MatMul", "Add"] and plan.blocks[-1].output == "logits"


def test_flatten_input_signature_keeps_the_sample_shape():
    view = view_of(passthrough_chain().model)
    assert input_signature(view).shape == (1, 2, 4)
    assert input_signature(view).dtype == DType.FLOAT32
    assert find_taps(view).taps[0].shape == (8,)


def test_any_op_between_layers_belongs_to_the_block_before_it():
    for op in ("Relu", "Sigmoid", "Tanh", "Elu", "Selu", "HardSigmoid", "HardSwish", "Identity", "Sin"):
        plan = find_taps(view_of(with_op_between(op).model))
        assert [t.source for t in plan.taps] == ["x", "u0"]
        assert [node.op for node in plan.blocks[0].nodes] == ["Gemm", op]


def test_tap_behind_a_custom_op_without_a_shape_is_named():
    with pytest.raises(UnsupportedGraphError, match=r"tap 'u0' \(input of fc1\) is unknown type unknown shape"):
        find_taps(view_of(with_op_between("Foo", "foo", domain="acme").model))


def test_residual_block_is_one_block_tapped_at_its_input():
    plan = find_taps(view_of(residual().model))
    assert [t.source for t in plan.taps] == ["x", "res"]
    assert [node.name for node in plan.blocks[0].nodes] == ["fc0", "relu_r0", "skip_add"]


def test_logits_must_come_from_a_layer():
    g = GraphBuilder()
    g.gemm("x", 4, 2, "h0", "fc0")
    g.node("Relu", ["h0"], "out", name="final_relu")
    model = g.model([("x", [BATCH, 4], TensorProto.FLOAT)], [("out", [BATCH, 2])])
    with pytest.raises(UnsupportedGraphError, match=r"logits 'out' come from node 'final_relu' \(Relu\); expected the last layer"):
        find_taps(view_of(model))


def test_layer_weight_must_be_constant():
    g = GraphBuilder()
    g.node("Relu", ["x"], "w_dynamic")
    g.node("MatMul", ["x", "w_dynamic"], "logits", name="mm")
    model = g.model([("x", [BATCH, 4], TensorProto.FLOAT)], [("logits", [BATCH, 4])])
    with pytest.raises(UnsupportedGraphError, match=r"no layer on the path .* node 'mm' \(MatMul\) has no constant \(initializer\) weight"):
        find_taps(view_of(model))


def test_softmax_over_the_batch_axis_is_rejected():
    g = GraphBuilder()
    g.gemm("x", 4, 2, "logits", "fc0")
    g.node("Softmax", ["logits"], "probs", name="sm", axis=0)
    model = g.model([("x", [BATCH, 4], TensorProto.FLOAT)], [("probs", [BATCH, 2])])
    with pytest.raises(UnsupportedGraphError, match=r"node 'sm' \(Softmax\) at the output normalises over axis 0"):
        find_taps(view_of(model))


def test_named_taps_override_the_walk_in_the_order_given():
    view = view_of(residual().model)  # not a chain, but the user knows best
    plan = find_taps(view, ["res", "x"])
    assert [t.source for t in plan.taps] == ["res", "x"]
    assert [t.layer for t in plan.taps] == ["fc1", "fc0"]
    assert plan.blocks == ()
    assert plan.logits == "logits"


def test_unknown_tap_name_is_named_with_candidates():
    with pytest.raises(UnsupportedGraphError) as error:
        find_taps(view_of(gemm_chain().model), ["r0", "hidden_9"])
    message = str(error.value)
    assert "no tensor named 'hidden_9'" in message
    assert "candidates: x, h0, r0, h1, r1, h2" in message


def test_constant_tap_name_is_rejected():
    with pytest.raises(UnsupportedGraphError, match=r"'fc0.weight' is a constant"):
        find_taps(view_of(gemm_chain().model), ["fc0.weight"])


def test_non_float_tap_is_rejected():
    g = GraphBuilder()
    g.node("Cast", ["x"], "xi", to=TensorProto.INT64)
    g.node("Cast", ["xi"], "xf", to=TensorProto.FLOAT)
    g.gemm("xf", 4, 2, "logits", "fc0")
    model = g.model([("x", [BATCH, 4], TensorProto.FLOAT)], [("logits", [BATCH, 2])])
    with pytest.raises(UnsupportedGraphError, match=r"'xi' is INT64; a tap must be a float tensor"):
        find_taps(view_of(model), ["xi"])


def test_repeated_tap_name_is_rejected():
    with pytest.raises(UnsupportedGraphError, match="'x' given more than once"):
        find_taps(view_of(gemm_chain().model), ["x", "x"])


def test_trailing_softmax_is_cut():
    case = gemm_chain(softmax="Softmax")
    plan = find_taps(view_of(case.model))
    assert plan.output_activation == OutputActivation.SOFTMAX
    assert plan.logits == "h2"
