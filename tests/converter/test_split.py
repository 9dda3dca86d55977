"""split: the frozen segment, differential-tested against the source model in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conv_graphs import DIFFERENTIAL_CASES, GraphBuilder, gemm_chain, matmul_add_chain, random_input, run_original, run_segment
from s2conv import convert
from s2conv.analyse import find_taps, input_signature
from s2conv.graph import view_graph
from s2conv.load import load_model
from s2conv.split import LOGITS_OUTPUT, SegmentOutput, extract_segment, segment_outputs
from s2conv.version import __version__
from s2rt.errors import ConversionError


def segment_of(case, tmp_path, names=None):
    loaded = load_model(case.save(tmp_path))
    view = view_graph(loaded.model, loaded.input_name, loaded.output_name)
    plan = find_taps(view, names)
    return extract_segment(loaded.model, input_signature(view), segment_outputs(plan)), loaded


@pytest.mark.parametrize("name", list(DIFFERENTIAL_CASES))
def test_segment_outputs_equal_the_source_models_tensors(name, tmp_path):
    case = DIFFERENTIAL_CASES[name]()
    bundle = convert(case.save(tmp_path))
    batch = case.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 5
    x = random_input(case.input_shape, batch)
    expected = run_original(case.model, x, [*case.taps, case.logits])
    got = run_segment(bundle, x)
    assert list(got) == [*(t.name for t in bundle.taps), LOGITS_OUTPUT]
    for tap, source in zip(bundle.taps, case.taps):
        assert tap.source == source
        assert got[tap.name].dtype == np.float32
        np.testing.assert_allclose(got[tap.name], expected[source].astype(np.float32), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[LOGITS_OUTPUT], expected[case.logits], rtol=0, atol=1e-6)


def test_segment_is_stamped_checked_and_has_a_dynamic_batch(tmp_path):
    segment, _ = segment_of(gemm_chain(batch=3), tmp_path)
    onnx.checker.check_model(segment, full_check=True)
    assert segment.producer_name == "s2conv"
    assert segment.producer_version == __version__
    for value in (*segment.graph.input, *segment.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.name for o in segment.graph.output] == ["s2l.tap.0", "s2l.tap.1", "s2l.tap.2", "s2l.logits"]


def test_segment_runs_any_batch_size(tmp_path):
    case = gemm_chain(batch=3)
    bundle = convert(case.save(tmp_path))
    for batch in (1, 7):
        out = run_segment(bundle, random_input(case.input_shape, batch))
        assert out["s2l.logits"].shape == (batch, 3)


def test_cut_output_activation_and_unused_nodes_are_dropped(tmp_path):
    segment, loaded = segment_of(gemm_chain(softmax="Softmax"), tmp_path)
    ops = [n.op_type for n in segment.graph.node]
    assert "Softmax" not in ops
    assert ops.count("Gemm") == 3
    assert len(segment.graph.initializer) == 6


def test_tap_that_is_the_graph_input_goes_through_an_identity(tmp_path):
    segment, _ = segment_of(matmul_add_chain(), tmp_path)
    first = next(n for n in segment.graph.node if "s2l.tap.0" in n.output)
    assert (first.op_type, list(first.input)) == ("Identity", ["x"])


def test_only_the_taps_ancestors_are_kept_for_named_taps(tmp_path):
    segment, _ = segment_of(gemm_chain(), tmp_path, ["x"])
    # the logits still need the whole chain, the single tap needs nothing
    assert [o.name for o in segment.graph.output] == ["s2l.tap.0", "s2l.logits"]
    assert sum(n.op_type == "Gemm" for n in segment.graph.node) == 3


def test_unknown_boundary_name_fails_before_cutting(tmp_path):
    loaded = load_model(gemm_chain().save(tmp_path))
    view = view_graph(loaded.model, loaded.input_name, loaded.output_name)
    bad = SegmentOutput("s2l.tap.0", "no_such_tensor", (4,), onnx.TensorProto.FLOAT)
    with pytest.raises(ConversionError, match="no tensor 'no_such_tensor' in the model"):
        extract_segment(loaded.model, input_signature(view), [bad])


def test_reserved_output_name_in_the_model_is_reported(tmp_path):
    case = gemm_chain()
    for node in case.model.graph.node:
        node.output[:] = ["s2l.logits" if o == "h1" else o for o in node.output]
        node.input[:] = ["s2l.logits" if i == "h1" else i for i in node.input]
    with pytest.raises(ConversionError, match="already has a tensor named 's2l.logits'"):
        segment_of(case, tmp_path)


def test_a_batch_size_pinned_inside_a_model_with_a_free_input_batch_is_reported(tmp_path):
    g = GraphBuilder()
    g.node("Reshape", ["x", g.const("shape", np.array([1, 8], np.int64))], "flat")
    g.gemm("flat", 8, 3, "logits", "fc0")
    path = tmp_path / "pinned.onnx"
    onnx.save(g.model([("x", ["N", 2, 4], onnx.TensorProto.FLOAT)], [("logits", [1, 3])]), path)
    with pytest.raises(ConversionError, match=r"tensor 'flat' \(segment output 's2l.tap.0'\) has a fixed batch size of 1"):
        convert(path)


def test_exporter_debug_metadata_stays_on_the_host(tmp_path):
    case = gemm_chain(batch=3)
    for node in case.model.graph.node:
        entry = node.metadata_props.add()
        entry.key, entry.value = "pkg.torch.onnx.stack_trace", "File /home/someone/secret/train.py, line 1"
    segment, loaded = segment_of(case, tmp_path)
    assert any(node.metadata_props for node in loaded.model.graph.node)
    assert not any(node.metadata_props for node in segment.graph.node)
