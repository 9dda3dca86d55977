"""`s2conv export`: the tuned model (adapters merged) equals the runtime's tuned output,
as ONNX on onnxruntime and as TFLite on LiteRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.parity import REL, assert_close, run_onnx, run_tflite, tflite_ops
from onnx import TensorProto, helper, numpy_helper
from s2conv import ConvertOptions, convert
from s2conv.cli import main
from s2conv.export import delta_weights, export_file, tuned_model
from s2rt.bundle import read_bundle, write_bundle
from s2rt.data import Samples, load_samples
from s2rt.errors import ConversionError, StateError
from s2rt.session import Model, softmax
from s2rt.state import load_adapters
from s2rt.trainer import TrainConfig

MODELS = Path(__file__).resolve().parents[2] / "models"


def _convert(source: Path, directory: Path, **options) -> Path:
    path = directory / f"{source.stem}.s2l"
    write_bundle(convert(source, ConvertOptions(**options)), path)
    return path


def _train(bundle_path: Path, x: np.ndarray, y: np.ndarray, out: Path) -> Model:
    model = Model.open(bundle_path)
    model.fine_tune(Samples(x, y), TrainConfig(epochs=4, batch_size=16, learning_rate=0.05, seed=0))
    model.save_adapters(out)
    return model


@pytest.fixture(scope="module")
def har(tmp_path_factory):
    directory = tmp_path_factory.mktemp("har")
    path = _convert(MODELS / "har_mlp.onnx", directory)
    bundle = read_bundle(path)
    data = load_samples(MODELS / "data" / "har_ft.npz", bundle.input, bundle.head.num_outputs)
    model = _train(path, data.x[:300], data.y[:300], directory / "adapters.npz")
    x = load_samples(MODELS / "data" / "har_test.npz", bundle.input).x[:100]
    return path, directory / "adapters.npz", model, x


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_export_equals_runtime_tuned_logits(har, tmp_path, suffix):
    path, adapters, model, x = har
    out = tmp_path / f"tuned{suffix}"
    size = export_file(read_bundle(path), adapters, out)
    assert size == out.stat().st_size
    want = {"logits": model.logits(x)}
    assert np.abs(want["logits"] - model.frozen.run(x)[1]).max() > 0.1  # the adapters changed something
    got = run_onnx(out.read_bytes(), x) if suffix == ".onnx" else run_tflite(out.read_bytes(), x)
    assert_close(got, want)


def test_tuned_onnx_is_one_matmul_and_add_per_tap(har):
    path, adapters, _, _ = har
    bundle = read_bundle(path)
    tuned = tuned_model(bundle, load_adapters(adapters, bundle)[0])
    ops = [n.op_type for n in tuned.graph.node if n.name.startswith("s2l.tuned")]
    assert ops == ["MatMul", "Add"] * len(bundle.taps) + ["Identity"]
    assert [o.name for o in tuned.graph.output] == ["logits"]  # the source model's output name
    assert [i.name for i in tuned.graph.input] == ["x"]


def test_tuned_tflite_runs_the_adapters_as_fully_connected_ops(har, tmp_path):
    path, adapters, _, _ = har
    export_file(read_bundle(path), adapters, tmp_path / "t.tflite")
    ops = tflite_ops((tmp_path / "t.tflite").read_bytes())
    assert ops.count("FULLY_CONNECTED") == 3 + 3 and ops.count("ADD") == 3


def test_delta_weight_is_scaled_b_times_a():
    bundle = convert(MODELS / "digits_mlp.onnx")
    rng = np.random.default_rng(0)
    head = bundle.head
    pairs = [(rng.normal(size=(head.rank, t.size)), rng.normal(size=(head.num_outputs, head.rank))) for t in bundle.taps]
    for (a, b), w in zip(pairs, delta_weights(bundle, pairs)):
        assert w.shape == (head.num_outputs, a.shape[1]) and w.dtype == np.float32
        np.testing.assert_allclose(w, head.scaling * b @ a, rtol=1e-5)


def softmax_mlp(directory: Path) -> Path:
    """x[4] -> Gemm -> Relu -> Gemm -> Softmax: the converter cuts the Softmax off."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.normal(size=(5, 4)).astype(np.float32), "W0"),
        numpy_helper.from_array(rng.normal(size=(3, 5)).astype(np.float32), "W1"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "W0"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W1"], ["z"], transB=1),
        helper.make_node("Softmax", ["z"], ["probs"], axis=-1),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])]
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])]
    graph = helper.make_graph(nodes, "sm", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = directory / "sm.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_output_activation_is_applied_again(tmp_path, suffix):
    path = _convert(softmax_mlp(tmp_path), tmp_path, backend="both")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    model = _train(path, x, rng.integers(0, 3, 40), tmp_path / "a.npz")
    out = tmp_path / f"t{suffix}"
    assert main(["export", str(path), "--adapters", str(tmp_path / "a.npz"), "-o", str(out)]) == 0
    got = run_onnx(out.read_bytes(), x) if suffix == ".onnx" else run_tflite(out.read_bytes(), x)
    assert list(got) == ["probabilities"]
    probabilities = model.predict_proba(x)
    np.testing.assert_allclose(got["probabilities"], probabilities, rtol=REL, atol=REL)
    # the predict graph runs onnxruntime's Softmax, which rounds an ulp apart from NumPy's
    np.testing.assert_allclose(probabilities, softmax(model.logits(x)), rtol=1e-6, atol=1e-7)


def test_output_name_option(har, tmp_path):
    path, adapters, _, x = har
    export_file(read_bundle(path), adapters, tmp_path / "t.onnx", output_name="scores")
    assert list(run_onnx((tmp_path / "t.onnx").read_bytes(), x)) == ["scores"]


def test_tflite_only_bundle_exports_tflite(tmp_path):
    """No ONNX segment: the adapters are appended to the TFLite segment itself."""
    path = _convert(softmax_mlp(tmp_path), tmp_path, backend="tflite")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    model = _train(path, x, rng.integers(0, 3, 40), tmp_path / "a.npz")
    assert model.frozen.backend.name == "tflite"
    assert main(["export", str(path), "--adapters", str(tmp_path / "a.npz"), "-o", str(tmp_path / "t.tflite")]) == 0
    data = (tmp_path / "t.tflite").read_bytes()
    assert tflite_ops(data)[-5:] == ["FULLY_CONNECTED", "ADD"] * 2 + ["SOFTMAX"]
    got = run_tflite(data, x)
    assert list(got) == ["probabilities"]
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(x), rtol=REL, atol=REL)
    with pytest.raises(ConversionError, match="can only be written as .tflite"):
        export_file(read_bundle(path), tmp_path / "a.npz", tmp_path / "t.onnx")


def test_tflite_only_bundle_with_feature_map_taps(tmp_path):
    """Multi-dimensional taps (a conv output, cached whole) go into FULLY_CONNECTED as they are."""
    rng = np.random.default_rng(2)
    inits = [
        numpy_helper.from_array(rng.normal(size=(3, 1, 3, 3)).astype(np.float32), "K"),
        numpy_helper.from_array(rng.normal(size=(4, 48)).astype(np.float32), "W"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "K"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "W"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=inits,
    )
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    source.ir_version = 8
    onnx.save(source, tmp_path / "cnn.onnx")
    x = rng.normal(size=(30, 1, 4, 4)).astype(np.float32)
    for backend in ("both", "tflite"):
        path = _convert(tmp_path / "cnn.onnx", tmp_path, backend=backend, taps=("x", "r"), tap_pool=0)
        assert [t.shape for t in read_bundle(path).taps] == [(1, 4, 4), (3, 4, 4)]
        model = _train(path, x, rng.integers(0, 4, 30), tmp_path / "a.npz")
        export_file(read_bundle(path), tmp_path / "a.npz", tmp_path / "t.tflite")
        assert_close(run_tflite((tmp_path / "t.tflite").read_bytes(), x), {"logits": model.logits(x)})


def test_adapters_of_another_bundle(har, tmp_path):
    _, adapters, _, _ = har
    other = _convert(MODELS / "har_mlp.onnx", tmp_path, seed=1)
    with pytest.raises(StateError, match="adapters were trained for bundle"):
        export_file(read_bundle(other), adapters, tmp_path / "t.onnx")


def test_unknown_suffix(har, tmp_path):
    path, adapters, _, _ = har
    with pytest.raises(ConversionError, match=r"name the file \*.onnx or \*.tflite"):
        export_file(read_bundle(path), adapters, tmp_path / "t.bin")


def test_cli_error_is_one_line(har, tmp_path, capsys):
    path, _, _, _ = har
    assert main(["export", str(path), "--adapters", str(tmp_path / "missing.npz"), "-o", str(tmp_path / "t.onnx")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such adapter file" in err[0]
