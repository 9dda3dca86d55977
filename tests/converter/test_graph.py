"""graph: the converter's view of a model: values, producers, constants."""

from __future__ import annotations

import numpy as np
from conv_graphs import BATCH, GraphBuilder, gemm_chain
from onnx import TensorProto, shape_inference
from s2conv.graph import GraphView, OnnxValue, view_graph


def view_of(model, input_name="x", output_name=None) -> GraphView:
    model = shape_inference.infer_shapes(model)
    return view_graph(model, input_name, output_name or model.graph.output[0].name)


def test_values_shapes_and_sample_shapes():
    view = view_of(gemm_chain(batch=BATCH).model)
    assert view.value("x").shape == (BATCH, 6)
    assert view.value("x").sample_shape == (6,)
    assert view.value("r0").sample_shape == (5,)
    assert view.value("fc0.weight").constant
    assert not view.value("h1").constant
    assert view.producer("h1").name == "fc1"
    assert [n.name for n in view.consumers_of("r0")] == ["fc1"]


def test_fixed_batch_dimension_is_dropped_too():
    view = view_of(gemm_chain(batch=3).model)
    assert view.value("x").shape == (3, 6)
    assert view.value("r1").sample_shape == (4,)


def test_sample_shape_needs_a_batch_and_fixed_sizes():
    def value(shape):
        return OnnxValue("t", TensorProto.FLOAT, shape, constant=False)

    assert value((BATCH, 2, 3)).sample_shape == (2, 3)
    assert value((8,)).sample_shape is None  # no batch dimension
    assert value((BATCH, "width")).sample_shape is None
    assert value((BATCH, None)).sample_shape is None
    assert value(None).sample_shape is None


def test_shape_only_subgraphs_are_constants():
    """torch's `x.view(x.size(0), -1)`: Shape → Gather → Concat → Reshape reads only shapes."""
    g = GraphBuilder()
    g.node("Shape", ["x"], "shape")
    g.node("Gather", ["shape", g.const("zero", np.array([0], np.int64))], "n", axis=0)
    g.node("Concat", ["n", g.const("minus_one", np.array([-1], np.int64))], "target", axis=0)
    g.node("Reshape", ["x", "target"], "flat")
    g.gemm("flat", 6, 2, "logits", "fc0")
    view = view_of(g.model([("x", [BATCH, 2, 3], TensorProto.FLOAT)], [("logits", [BATCH, 2])]))
    assert view.is_constant("target")
    assert view.data_inputs(view.producer("flat")) == ("x",)
    assert view.tensors_from_input() == ("x", "flat", "logits")


def test_node_labels_name_the_node_or_its_position():
    view = view_of(gemm_chain().model)
    assert view.producer("h0").label == "node 'fc0' (Gemm)"
    unnamed = view.producer("h0").__class__(3, "", "Relu", "", ("a",), ("b",), {})
    assert unnamed.label == "node #3 (Relu)"
