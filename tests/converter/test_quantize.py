"""quantize: `s2conv --quantize int8 --calib FILE`, the int8 (QDQ) frozen segment.

Calibration uses each workload's pretraining inputs (what a host has), never the device data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conv_graphs import IR_VERSION, OPSET, gemm_chain
from onnx import TensorProto, helper, numpy_helper
from s2conv import ConvertOptions, convert
from s2conv.convert import InvalidOptionError
from s2conv.quantize import _store_float16, quantize_segment
from s2models.data import digits, har
from s2rt.bundle import SegmentBackend, serialize_bundle
from s2rt.bundle.reader import parse_bundle
from s2rt.data import load_samples
from s2rt.errors import ConversionError
from s2rt.session import Model
from s2rt.trainer import TrainConfig

MODELS = Path(__file__).resolve().parents[2] / "models"
WORKLOADS = {"har": har, "digits": digits}


@pytest.fixture(scope="module", params=sorted(WORKLOADS))
def workload(request, tmp_path_factory):
    name = request.param
    calib = tmp_path_factory.mktemp(name) / "calib.npz"
    np.savez(calib, x=WORKLOADS[name].load().train.x)
    return name, calib


def segment_of(bundle) -> onnx.ModelProto:
    return onnx.load_from_string(bytes(bundle.segment(SegmentBackend.ONNX).model))


def fine_tuned_accuracy(bundle, name: str, epochs: int = 20) -> float:
    model = Model(parse_bundle(serialize_bundle(bundle)[0]))
    ft, test = (load_samples(MODELS / "data" / f"{name}_{split}.npz", bundle.input) for split in ("ft", "test"))
    model.fine_tune(ft, TrainConfig(epochs=epochs, seed=0))
    return float(model.evaluate(test)["accuracy"])


def test_int8_fine_tunes_within_a_point_of_float(workload):
    name, calib = workload
    source = MODELS / f"{name}_mlp.onnx"
    float_acc = fine_tuned_accuracy(convert(source), name)
    int8_acc = fine_tuned_accuracy(convert(source, ConvertOptions(quantize="int8", calib=str(calib))), name)
    assert abs(int8_acc - float_acc) <= 0.01, f"{name}: float {float_acc:.4f}, int8 {int8_acc:.4f}"


def test_an_int8_cnn_fine_tunes_within_a_point_of_float(tmp_path):
    """The digits ResNet-style CNN (QLinearConv path), 2x2 taps, 5 epochs as in the benchmark."""
    np.savez(tmp_path / "calib.npz", x=digits.load().train.x[:1000])
    source, options = MODELS / "digits_cnn.onnx", {"tap_pool": 2}
    float_acc = fine_tuned_accuracy(convert(source, ConvertOptions(**options)), "digits", epochs=5)
    int8 = convert(source, ConvertOptions(**options, quantize="int8", calib=str(tmp_path / "calib.npz")))
    int8_acc = fine_tuned_accuracy(int8, "digits", epochs=5)
    assert abs(int8_acc - float_acc) <= 0.01, f"float {float_acc:.4f}, int8 {int8_acc:.4f}"  # measured 0.822 vs 0.825


def test_int8_bundle_stores_only_int8_weights_and_shrinks(workload):
    name, calib = workload
    source = MODELS / f"{name}_mlp.onnx"
    float_bundle = convert(source)
    int8_bundle = convert(source, ConvertOptions(quantize="int8", calib=str(calib)))
    segment = segment_of(int8_bundle)
    matrices = [t for t in segment.graph.initializer if len(t.dims) == 2]
    assert matrices and all(t.data_type == onnx.TensorProto.INT8 for t in matrices)
    assert not any(node.metadata_props for node in segment.graph.node)
    float_size, int8_size = (len(serialize_bundle(b)[0]) for b in (float_bundle, int8_bundle))
    # Measured 0.301 (HAR) and 0.294 (digits): the weights shrink 4x; per-channel scales and
    # zero points, float16 biases, the QDQ nodes and the bundle's own tables stay.
    assert int8_size <= 0.31 * float_size, f"{name}: {int8_size} vs {float_size} bytes"


def test_a_wider_model_is_under_a_third_of_its_float_bundle(tmp_path):
    case = gemm_chain((64, 256, 256, 10))
    x = np.random.default_rng(0).normal(size=(256, 64)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    source = case.save(tmp_path)
    float_size = len(serialize_bundle(convert(source))[0])
    int8_size = len(serialize_bundle(convert(source, ConvertOptions(quantize="int8", calib=str(tmp_path / "calib.npz"))))[0])
    assert int8_size <= 0.3 * float_size, f"{int8_size} vs {float_size} bytes"


def test_outputs_stay_float_taps_read_unrounded_tensors_and_logits_are_not_quantized(tmp_path):
    source = convert(gemm_chain((8, 16, 16, 4)).save(tmp_path))
    segment = segment_of(source)
    x = np.random.default_rng(1).normal(size=(128, 8)).astype(np.float32)
    quantized = quantize_segment(segment, x)
    assert [(o.name, o.type.tensor_type.elem_type) for o in quantized.graph.output] == [
        (o.name, o.type.tensor_type.elem_type) for o in segment.graph.output
    ]
    producer = {out: node for node in quantized.graph.node for out in node.output}
    for output in quantized.graph.output:
        exporter = producer[output.name]
        assert producer.get(exporter.input[0]) is None or producer[exporter.input[0]].op_type != "DequantizeLinear"
    logits_layer = producer[producer["s2l.logits"].input[0]]
    assert logits_layer.op_type == "Gemm"
    assert producer[logits_layer.input[0]].op_type != "DequantizeLinear", "the logits layer reads float activations"
    assert producer[logits_layer.input[1]].op_type == "DequantizeLinear", "and int8 weights"
    assert len(segment.graph.node) == len(segment_of(source).graph.node), "the input segment is left untouched"
    float_out, int8_out = run(segment, x), run(quantized, x)
    np.testing.assert_array_equal(int8_out["s2l.tap.0"], float_out["s2l.tap.0"])  # the input: nothing upstream
    for name in ("s2l.tap.1", "s2l.tap.2", "s2l.logits"):
        scale = np.abs(float_out[name]).max()
        assert np.abs(int8_out[name] - float_out[name]).max() <= 0.05 * scale, name


def run(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"x": x})))


def test_quantize_needs_calibration_and_calibration_needs_a_use():
    with pytest.raises(InvalidOptionError, match="quantize=int8 needs calibration"):
        ConvertOptions(quantize="int8")
    with pytest.raises(InvalidOptionError, match="calib is only used"):
        ConvertOptions(calib="calib.npz")
    with pytest.raises(InvalidOptionError, match="quantize: expected one of none, int8"):
        ConvertOptions(quantize="int4", calib="calib.npz")
    assert ConvertOptions(cache_dtype="int8", calib=Path("c.npz")).calib == "c.npz"


@pytest.mark.parametrize(
    "arrays, message",
    [({"y": np.zeros(3)}, "expected 'x'"), ({"x": np.zeros((3, 5), np.float32)}, "expects (6,)"), ({"x": np.full((2, 6), np.nan)}, "NaN")],
)
def test_bad_calibration_file_names_the_file(tmp_path, arrays, message):
    source = gemm_chain().save(tmp_path)
    np.savez(tmp_path / "calib.npz", **arrays)
    with pytest.raises(ConversionError, match="calibration data: .*calib.npz") as e:
        convert(source, ConvertOptions(quantize="int8", calib=str(tmp_path / "calib.npz")))
    assert message in str(e.value)


def test_opset_and_ir_of_the_source_are_kept(tmp_path):
    source = gemm_chain().save(tmp_path)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32))
    segment = segment_of(convert(source, ConvertOptions(quantize="int8", calib=str(tmp_path / "calib.npz"))))
    assert segment.ir_version == IR_VERSION
    assert {o.domain: o.version for o in segment.opset_import}.get("", 0) >= OPSET


def test_float16_storage_keeps_what_float16_cannot_hold():
    rng = np.random.default_rng(0)
    constants = {
        "small": rng.normal(size=32).astype(np.float32),
        "huge": np.full(32, 1e6, np.float32),  # beyond float16's 65504
        "spread": np.geomspace(1e-9, 1.0, 32).astype(np.float32),  # tiny values round to 0: within 2^-10 of the largest
        "few": rng.normal(size=8).astype(np.float32),  # a Cast would cost more than it saves
    }
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [32])
    nodes = [helper.make_node("Add", ["x", name], [f"{name}.sum"]) for name in constants]
    inits = [numpy_helper.from_array(a, name) for name, a in constants.items()]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    _store_float16(graph)
    assert {t.name: t.data_type for t in graph.initializer} == {
        "small.float16": TensorProto.FLOAT16,
        "huge": TensorProto.FLOAT,
        "spread.float16": TensorProto.FLOAT16,
        "few": TensorProto.FLOAT,
    }
    assert [(n.op_type, n.input[0], n.output[0]) for n in graph.node[:2]] == [
        ("Cast", "small.float16", "small"),
        ("Cast", "spread.float16", "spread"),
    ], "each float16 constant is cast back under its own name, before its readers"
