"""quantize: `s2conv --quantize int8 --calib FILE`, the int8 (QDQ) frozen segment.

Calibration uses each workload's pretraining inputs (what a host has), never the device data.

The segment must compute the same on every CPU: x86 without VNNI adds pairs of u8 x s8
products in a saturating int16, so no such pair may exceed 32,767. That is checked here in
NumPy (`worst_u8s8_pair`, and an emulation of that kernel on real activations), not by
the CPU the tests run on; the accuracy figures in the comments were measured on this
machine (AVX-512 VNNI) and, identical, under `qemu-x86_64 -cpu Haswell` (AVX2, no VNNI).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conv_graphs import IR_VERSION, OPSET, gemm_chain
from onnx import TensorProto, helper, numpy_helper
from s2conv import ConvertOptions, convert
from s2conv.convert import InvalidOptionError
from s2conv.describe import describe_bundle, render_text
from s2conv.quantize import INT16_MAX, ONNX_SCHEME, _store_float16, quantize_segment, quantized_weights, worst_u8s8_pair
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
    # Measured float 0.8222, int8 0.8278, here and under qemu -cpu Haswell alike; with 8-bit
    # weights it was 0.8250 here but 0.7778 on AVX2 without VNNI (saturated int16 pairs).
    assert abs(int8_acc - float_acc) <= 0.01, f"float {float_acc:.4f}, int8 {int8_acc:.4f}"
    assert worst_u8s8_pair(segment_of(int8)) <= INT16_MAX


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
    # Measured relative errors 0.016 / 0.020 / 0.020 with 7-bit weights on both kinds of x86;
    # 8-bit weights gave 0.011 on VNNI but 0.38 / 0.27 / 0.19 on AVX2 without VNNI.
    for name in ("s2l.tap.1", "s2l.tap.2", "s2l.logits"):
        scale = np.abs(float_out[name]).max()
        assert np.abs(int8_out[name] - float_out[name]).max() <= 0.05 * scale, name
    assert all(np.array_equal(kernel, exact) for exact, kernel in u8s8_sums_without_vnni(quantized, x))


def run(model: onnx.ModelProto, x: np.ndarray, extra_outputs: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    if extra_outputs:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in extra_outputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))


def u8s8_sums_without_vnni(model: onnx.ModelProto, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each int8 Gemm/MatMul of `model` that reads Q/DQ activations: the exact int32 sums of
    its uint8 activations (onnxruntime on x86 adds 128 to int8 ones) times its int8 weights on
    input `x`, and the sums as an x86 kernel without VNNI forms them: each pair of adjacent
    products in K added in a saturating int16 (VPMADDUBSW), then the pairs in int32."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    layers = []
    for node in graph.node:
        dq_x, dq_w = (producer.get(name) for name in [*node.input, "", ""][:2])
        if node.op_type in ("Gemm", "MatMul") and dq_x is not None and dq_x.op_type == "DequantizeLinear" and dq_w is not None:
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            w = constants[dq_w.input[0]].astype(np.int32)
            layers.append((producer[dq_x.input[0]], w.T if trans_b else w))
    floats = run(model, x, tuple(q.input[0] for q, _ in layers))
    sums = []
    for q, w in layers:
        scale, zero = constants[q.input[1]], constants[q.input[2]].astype(np.int32)
        a = np.clip(np.rint(floats[q.input[0]] / scale) + zero, -128, 127).astype(np.int32) + 128
        products = a[:, :, None] * w[None, :, :]  # (batch, K, N)
        products = np.concatenate([products, np.zeros_like(products[:, :1])], axis=1) if products.shape[1] % 2 else products
        pairs = np.clip(products[:, 0::2] + products[:, 1::2], -(INT16_MAX + 1), INT16_MAX)
        sums.append((products.sum(axis=1), pairs.sum(axis=1)))
    assert sums, "the model has int8 Gemm/MatMul ops with Q/DQ activations"
    return sums


def test_no_u8s8_pair_can_saturate_whatever_the_cpu(workload):
    """CPU-independent: every int8 weight is 7-bit, so 2 x 255 x 64 <= 32,767 bounds every pair,
    and an emulation of the non-VNNI kernel on the calibration inputs matches the exact sums."""
    name, calib = workload
    bundle = convert(MODELS / f"{name}_mlp.onnx", ConvertOptions(quantize="int8", calib=str(calib)))
    segment = segment_of(bundle)
    weights = quantized_weights(segment)
    assert len(weights) == 3 and all(np.abs(w.astype(np.int32)).max() <= 64 for w in weights.values())
    assert worst_u8s8_pair(segment) <= INT16_MAX
    x = np.load(calib)["x"][:256]
    for exact, kernel in u8s8_sums_without_vnni(segment, x):
        np.testing.assert_array_equal(kernel, exact)


def test_the_pair_bound_flags_8_bit_weights():
    """The check itself: two int8 weights of 127 and -128 in one op can reach 255 x 255."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])
    inits = [
        numpy_helper.from_array(np.array([[127], [-128]], np.int8), "w"),
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"]), helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))
    assert list(quantized_weights(model)) == ["mm"]
    assert worst_u8s8_pair(model) == 255 * 255 > INT16_MAX


def test_inspect_names_the_int8_scheme_of_each_segment(tmp_path):
    source = gemm_chain().save(tmp_path)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32))
    int8 = convert(source, ConvertOptions(backend="both", quantize="int8", calib=str(tmp_path / "calib.npz")))
    schemes = {s["backend"]: s["int8"]["scheme"] for s in describe_bundle(int8)["segments"]}
    assert schemes == {"onnx": ONNX_SCHEME, "tflite": "a8w8"}
    text = render_text(describe_bundle(int8))
    assert "int8        onnx: a8w7 (int8 activations per tensor, int8 weights per channel in -64..64 (7 bits)" in text
    assert "int8        tflite: a8w8" in text
    assert [s["int8"] for s in describe_bundle(convert(source))["segments"]] == [None]
    assert "\nint8 " not in render_text(describe_bundle(convert(source)))


def test_inspect_warns_about_an_int8_bundle_that_predates_the_scheme(tmp_path):
    source = gemm_chain().save(tmp_path)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32))
    bundle = convert(source, ConvertOptions(quantize="int8", calib=str(tmp_path / "calib.npz")))
    options = json.loads(bundle.provenance.options_json)
    del options["int8_scheme"]
    old = dataclasses.replace(bundle, provenance=dataclasses.replace(bundle.provenance, options_json=json.dumps(options)))
    (segment,) = describe_bundle(old)["segments"]
    assert segment["int8"]["scheme"] == "a8w8" and "without VNNI" in segment["int8"]["note"]
    assert "convert again to get a8w7" in render_text(describe_bundle(old))


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


def test_s2conv_inspect_says_which_int8_scheme_a_bundle_uses(tmp_path):
    """The command a user runs: `s2conv MODEL --quantize int8 --calib …`, then `s2conv inspect`."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "runtime"), str(root / "converter")])}

    def s2conv(*args: object) -> str:
        result = subprocess.run([sys.executable, "-m", "s2conv.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32))
    bundle = tmp_path / "int8.s2l"
    s2conv(gemm_chain().save(tmp_path), "-o", bundle, "--quantize", "int8", "--calib", tmp_path / "calib.npz")
    text = s2conv("inspect", bundle)
    assert "\nint8        onnx: a8w7 (int8 activations per tensor, int8 weights per channel in -64..64" in text
    assert "on any CPU (x86 with or without VNNI, ARM64)" in text
