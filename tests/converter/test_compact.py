"""compact: the frozen ONNX segment minus what onnxruntime never reads, computing the same."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conv_graphs import IR_VERSION, OPSET
from helpers.parity import run_onnx
from onnx import TensorProto, helper
from s2conv.analyse import find_taps, input_signature
from s2conv.compact import compact_segment
from s2conv.graph import view_graph
from s2conv.load import load_model
from s2conv.quantize import quantize_segment
from s2conv.split import extract_segment, segment_outputs
from s2models.data import digits, har, mnist

MODELS = Path(__file__).resolve().parents[2] / "models"
REFERENCE = ("har_mlp", "digits_mlp", "fan_mlp", "digits_cnn", "mnist_cnn")
CALIBRATION = {"har_mlp": har, "digits_mlp": digits, "digits_cnn": digits, "mnist_cnn": mnist}


def cut(name: str) -> onnx.ModelProto:
    loaded = load_model(MODELS / f"{name}.onnx")
    view = view_graph(loaded.model, loaded.input_name, loaded.output_name)
    return extract_segment(loaded.model, input_signature(view), segment_outputs(find_taps(view, None, 1)))


def inputs_for(segment: onnx.ModelProto, batch: int = 16) -> np.ndarray:
    dims = [d.dim_value for d in segment.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(0).normal(size=(batch, *dims)).astype(np.float32)


def calibrated_int8(name: str) -> onnx.ModelProto:
    segment = cut(name)
    dims = [d.dim_value for d in segment.graph.input[0].type.tensor_type.shape.dim[1:]]
    calibration = CALIBRATION[name].load().train.x[:256].astype(np.float32).reshape(-1, *dims)
    return quantize_segment(segment, calibration)


def optimised_ops(model: onnx.ModelProto, tmp_path: Path) -> collections.Counter[str]:
    """The op counts of the graph onnxruntime actually runs, after its fusions (but for the
    output Identities compaction removes)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(tmp_path / "optimised.onnx").graph
    return collections.Counter(node.op_type for node in graph.node if node.op_type != "Identity")


@pytest.mark.parametrize("name", REFERENCE)
def test_compact_float_segments_compute_exactly_the_same_and_shrink(name):
    segment = cut(name)
    compact = compact_segment(segment)
    x = inputs_for(segment)
    want, got = run_onnx(segment, x), run_onnx(compact, x)
    assert list(got) == list(want)
    for output in want:
        np.testing.assert_array_equal(got[output], want[output], err_msg=output)
    assert compact.ByteSize() < segment.ByteSize()


@pytest.mark.parametrize("name", sorted(CALIBRATION))
def test_compact_int8_segments_compute_the_same_and_keep_onnxruntimes_fusions(name, tmp_path):
    int8 = calibrated_int8(name)
    compact = compact_segment(int8)
    x = inputs_for(int8)
    want, got = run_onnx(int8, x), run_onnx(compact, x)
    for output in want:
        np.testing.assert_array_equal(got[output], want[output], err_msg=output)
    fused = optimised_ops(int8, tmp_path)
    assert fused["QGemm"] + fused["QLinearConv"] > 0, fused
    assert optimised_ops(compact, tmp_path) == fused


def test_names_are_short_and_annotations_gone_but_the_interface_stays():
    segment = calibrated_int8("har_mlp")
    compact = compact_segment(segment)
    graph = compact.graph
    interface = [v.name for v in (*graph.input, *graph.output)]
    assert interface == [v.name for v in (*segment.graph.input, *segment.graph.output)]
    internal = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} - set(interface)
    assert internal and max(len(name) for name in internal) <= 2, sorted(internal, key=len)[-3:]
    assert not graph.value_info and not compact.metadata_props
    assert not any(n.HasField("name") or n.HasField("doc_string") or n.metadata_props for n in graph.node)
    assert not any(n.op_type == "Identity" for n in graph.node)  # the MLP's taps are all internal tensors
    constants = [(t.data_type, tuple(t.dims), onnx.numpy_helper.to_array(t).tobytes()) for t in graph.initializer]
    assert len(set(constants)) == len(constants), "equal constants are stored once"
    assert len(graph.initializer) < len(segment.graph.initializer)  # fc1's and fc2's zero points were equal
    onnx.checker.check_model(compact, full_check=True)
    assert segment.graph.value_info, "the input model was changed"


def test_only_default_valued_attributes_go():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("s2l.logits", TensorProto.FLOAT, ["batch", 2])
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 3], np.arange(6, dtype=np.float32))
    gemm = helper.make_node("Gemm", ["x", "w"], ["s2l.logits"], alpha=1.0, beta=1.0, transA=0, transB=1)
    model = helper.make_model(
        helper.make_graph([gemm], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    (node,) = compact_segment(model).graph.node
    assert {a.name: helper.get_attribute_value(a) for a in node.attribute} == {"transB": 1}


def test_a_graph_with_a_subgraph_keeps_its_names():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("s2l.logits", TensorProto.FLOAT, ["batch", 3])
    inner_out = helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, ["batch", 3])
    branch = helper.make_graph([helper.make_node("Relu", ["outer_value"], ["branch_out"])], "branch", [], [inner_out])
    flag = helper.make_tensor("flag", TensorProto.BOOL, [], [True])
    nodes = [
        helper.make_node("Neg", ["x"], ["outer_value"]),
        helper.make_node("If", ["flag"], ["s2l.logits"], then_branch=branch, else_branch=branch),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], [flag]), opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    compact = compact_segment(model)
    assert [n.output[0] for n in compact.graph.node] == ["outer_value", "s2l.logits"]
    data = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    np.testing.assert_array_equal(run_onnx(compact, data)["s2l.logits"], np.maximum(-data, 0))


def test_int8_float_constants_are_stored_as_float16_behind_a_cast():
    segment = calibrated_int8("har_mlp")
    float16 = {t.name for t in segment.graph.initializer if t.data_type == TensorProto.FLOAT16}
    casts = {n.input[0] for n in segment.graph.node if n.op_type == "Cast"}
    assert float16 and float16 == casts
    large_float32 = [t.name for t in segment.graph.initializer if t.data_type == TensorProto.FLOAT and np.prod(t.dims) >= 16]
    assert not large_float32
