"""`s2conv export` of the heads beyond linear (skip2relu, oselm, oselm-rf): the activation
and the standardization inside the graph; ONNX on onnxruntime and TFLite on LiteRT equal
the runtime's tuned logits, from an ONNX segment and from a TFLite-only bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.parity import assert_close, run_onnx, run_tflite, tflite_ops
from s2conv import ConvertOptions, convert
from s2conv.export import export_file, head_branches, tuned_model_branches
from s2rt.bundle import read_bundle, write_bundle
from s2rt.data import Samples, load_samples
from s2rt.errors import ConversionError
from s2rt.session import Model
from s2rt.trainer import TrainConfig

MODELS = Path(__file__).resolve().parents[2] / "models"
HEADS = ["skip2relu", "oselm", "oselm-rf"]
REL = 2e-5  # float32: the standardization is folded into the first layer in the export


@pytest.fixture(scope="module")
def har(tmp_path_factory):
    directory = tmp_path_factory.mktemp("har")
    path = directory / "har.s2l"
    write_bundle(convert(MODELS / "har_mlp.onnx", ConvertOptions()), path)
    bundle = read_bundle(path)
    data = load_samples(MODELS / "data" / "har_ft.npz", bundle.input, bundle.head.num_outputs)
    x = load_samples(MODELS / "data" / "har_test.npz", bundle.input).x[:100]
    models = {}
    for method in HEADS:
        model = Model.open(path, method=method)
        model.fine_tune(Samples(data.x[:300], data.y[:300]), TrainConfig(epochs=4, batch_size=16, learning_rate=0.01, seed=0))
        model.save_adapters(directory / f"{method}.npz")
        models[method] = model
    return path, directory, models, x


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
@pytest.mark.parametrize("method", HEADS)
def test_export_equals_runtime_tuned_logits(har, tmp_path, method, suffix):
    path, directory, models, x = har
    out = tmp_path / f"tuned{suffix}"
    export_file(read_bundle(path), directory / f"{method}.npz", out)
    model = models[method]
    want = {"logits": model.logits(x)}
    assert np.abs(want["logits"] - model.frozen.run(x)[1]).max() > 0.1  # the head changed something
    got = run_onnx(out.read_bytes(), x) if suffix == ".onnx" else run_tflite(out.read_bytes(), x)
    assert_close(got, want, REL)


def test_skip2relu_is_a_relu_branch_per_tap(har, tmp_path):
    path, directory, _, _ = har
    bundle = read_bundle(path)
    tuned = tuned_model_branches(bundle, head_branches(bundle, directory / "skip2relu.npz"))
    ops = [n.op_type for n in tuned.graph.node if n.name.startswith("s2l.tuned")]
    assert ops.count("Relu") == 3 and ops.count("MatMul") == 3 + 3 and "Sub" not in ops and "Div" not in ops
    export_file(bundle, directory / "skip2relu.npz", tmp_path / "t.tflite")
    tflite = tflite_ops((tmp_path / "t.tflite").read_bytes())
    assert tflite.count("FULLY_CONNECTED") == 3 + 3 + 3  # the frozen MLP, then A_l (ReLU fused in) and B_l per tap


def test_oselm_folds_into_one_linear_branch(har):
    path, directory, _, _ = har
    bundle = read_bundle(path)
    (branch,) = head_branches(bundle, directory / "oselm.npz")
    assert not branch.relu and branch.out is None and branch.bias is not None
    assert [w.shape for w in branch.weights] == [(7, t.size) for t in bundle.taps]


def test_tflite_only_bundle_exports_a_nonlinear_head(tmp_path):
    path = tmp_path / "har.s2l"
    write_bundle(convert(MODELS / "har_mlp.onnx", ConvertOptions(backend="tflite")), path)
    bundle = read_bundle(path)
    data = load_samples(MODELS / "data" / "har_ft.npz", bundle.input, bundle.head.num_outputs)
    for method in ("skip2relu", "oselm-rf"):
        model = Model.open(path, method=method)
        model.fine_tune(Samples(data.x[:200], data.y[:200]), TrainConfig(epochs=3, batch_size=16, learning_rate=0.01))
        model.save_adapters(tmp_path / f"{method}.npz")
        export_file(bundle, tmp_path / f"{method}.npz", tmp_path / f"{method}.tflite")
        x = data.x[200:260]
        assert_close(run_tflite((tmp_path / f"{method}.tflite").read_bytes(), x), {"logits": model.logits(x)}, REL)
        with pytest.raises(ConversionError, match="can only be written as .tflite"):
            export_file(bundle, tmp_path / f"{method}.npz", tmp_path / "t.onnx")


def test_a_method_without_a_graph_form_is_named(har, tmp_path):
    path, _, _, _ = har
    model = Model.open(path, method="ft-bias")
    model.save_adapters(tmp_path / "bias.npz")
    with pytest.raises(ConversionError, match="ft-bias adapters cannot be exported yet"):
        export_file(read_bundle(path), tmp_path / "bias.npz", tmp_path / "t.onnx")


@pytest.mark.parametrize("backend", ["onnx", "tflite"])
def test_cnn_feature_map_taps_export_with_a_nonlinear_head(tmp_path, backend):
    """digits_cnn with 2x2-pooled conv taps (C x 2 x 2, flattened in the graph): skip2relu and oselm-rf."""
    path = tmp_path / "cnn.s2l"
    write_bundle(convert(MODELS / "digits_cnn.onnx", ConvertOptions(tap_pool=2, backend=backend)), path)
    bundle = read_bundle(path)
    assert any(len(t.shape) > 1 for t in bundle.taps)
    data = load_samples(MODELS / "data" / "digits_ft.npz", bundle.input, bundle.head.num_outputs)
    x = data.x[200:240]
    for method in ("skip2relu", "oselm-rf"):
        model = Model.open(path, method=method)
        model.fine_tune(Samples(data.x[:200], data.y[:200]), TrainConfig(epochs=3, batch_size=16, learning_rate=0.01))
        model.save_adapters(tmp_path / f"{method}.npz")
        suffixes = (".onnx", ".tflite") if backend == "onnx" else (".tflite",)
        for suffix in suffixes:
            out = tmp_path / f"{method}{suffix}"
            export_file(bundle, tmp_path / f"{method}.npz", out)
            got = run_onnx(out.read_bytes(), x) if suffix == ".onnx" else run_tflite(out.read_bytes(), x)
            assert_close(got, {"logits": model.logits(x)}, 1e-4)
