"""load: read, check, shape-infer and hash an .onnx file; one input, one output."""

from __future__ import annotations

import hashlib

import onnx
import pytest
from conv_graphs import BATCH, GraphBuilder, gemm_chain, two_inputs
from onnx import TensorProto, helper
from s2conv.load import load_model
from s2rt.errors import ConversionError, UnsupportedGraphError


def test_loads_names_and_hashes_the_file(tmp_path):
    path = gemm_chain().save(tmp_path)
    loaded = load_model(path)
    assert loaded.input_name == "x"
    assert loaded.output_name == "h2"
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.source_name == "model.onnx"
    inferred = {v.name for v in loaded.model.graph.value_info}
    assert {"h0", "r0", "h1"} <= inferred  # shape inference ran


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ConversionError, match=r"nope\.onnx: no such file"):
        load_model(tmp_path / "nope.onnx")


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(ConversionError, match="not a file"):
        load_model(tmp_path)


def test_not_onnx_names_the_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a protobuf, just text\n" * 3)
    with pytest.raises(ConversionError, match=r"notes\.onnx: not an ONNX model"):
        load_model(path)


def test_checker_failure_names_the_file(tmp_path):
    g = GraphBuilder()
    g.node("Relu", ["undefined_tensor"], "y")
    path = tmp_path / "broken.onnx"
    onnx.save(g.model([("x", [BATCH, 2], TensorProto.FLOAT)], [("y", [BATCH, 2])]), path)
    with pytest.raises(ConversionError, match=r"broken\.onnx: the ONNX checker rejects the model"):
        load_model(path)


def test_two_inputs_are_named(tmp_path):
    path = tmp_path / "two.onnx"
    onnx.save(two_inputs(), path)
    with pytest.raises(UnsupportedGraphError, match=r"exactly one graph input .* found 2: 'a', 'b'"):
        load_model(path)


def test_initialisers_listed_as_inputs_are_not_inputs(tmp_path):
    model = gemm_chain().model
    model.ir_version = 3  # before IR 4 every initialiser had to be a graph input as well
    for init in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    path = tmp_path / "old.onnx"
    onnx.save(model, path)
    assert load_model(path).input_name == "x"


def test_two_float_outputs_are_named_and_output_chooses(tmp_path):
    model = gemm_chain().model
    model.graph.output.append(helper.make_tensor_value_info("r0", TensorProto.FLOAT, [BATCH, 5]))
    path = tmp_path / "two_out.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedGraphError, match=r"two_out\.onnx: the model has 2 outputs \('h2', 'r0'\) .* `--scores NAME`"):
        load_model(path)
    loaded = load_model(path, scores="h2")
    assert loaded.output_name == "h2" and loaded.notes == ("outputs 'r0' ignored (--scores h2)",)
    with pytest.raises(UnsupportedGraphError, match=r"--scores: no tensor named 'nope'"):
        load_model(path, scores="nope")


PROBABILITY_MAP = helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))


def test_label_and_zipmap_outputs_lead_to_the_probabilities(tmp_path):
    g = GraphBuilder()
    g.gemm("x", 4, 3, "scores", "fc0")
    g.node("Softmax", ["scores"], "probs", axis=1)
    g.node("ArgMax", ["probs"], "index", axis=1, keepdims=0)
    g.node("Cast", ["index"], "label", to=TensorProto.INT64)
    g.nodes.append(helper.make_node("ZipMap", ["probs"], ["prob_maps"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]))
    model = g.model([("x", [BATCH, 4], TensorProto.FLOAT)], [])
    model.graph.output.extend(
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [BATCH]),
            helper.make_value_info("prob_maps", helper.make_sequence_type_proto(PROBABILITY_MAP)),
        ]
    )
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))
    path = tmp_path / "sk.onnx"
    onnx.save(model, path)
    loaded = load_model(path)
    assert loaded.output_name == "probs"
    assert loaded.notes == (
        "output 'label' (int64, the predicted label via ArgMax) ignored: used the scores 'probs'",
        "output 'prob_maps' is a ZipMap (a list of class → probability maps): used its input 'probs'",
    )
