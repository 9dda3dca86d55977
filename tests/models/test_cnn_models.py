"""The committed reference CNNs: graphs of the advertised shape, recorded accuracies, MNIST data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from s2models.build import RECIPES, features, without_trace
from s2models.cnn import digits_cnn, mnist_mobilenet
from s2models.data import mnist

MODELS = Path(__file__).resolve().parents[2] / "models"
INDEX = json.loads((MODELS / "models.json").read_text())
CNNS = {"digits_cnn": (1, 8, 8), "mnist_cnn": (1, 28, 28)}


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="module")
def mnist_workload():
    return mnist.load()


def ops(name: str) -> list[onnx.NodeProto]:
    return list(onnx.load(MODELS / INDEX[name]["onnx"]).graph.node)


@pytest.mark.parametrize("name", sorted(CNNS))
def test_cnn_onnx_signature_and_provenance(name):
    entry = INDEX[name]
    path = MODELS / entry["onnx"]
    assert path.stat().st_size < 300_000
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert model.producer_name == "s2models" and model.opset_import[0].version == 18
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == ["batch", *CNNS[name]] == entry["input"]["shape"]
    assert graph_output.name == "logits"
    assert b"/work" not in path.read_bytes() and not any(n.metadata_props for n in model.graph.node)  # no stack traces


def test_digits_cnn_has_a_residual_block():
    kinds = [n.op_type for n in ops("digits_cnn")]
    assert kinds.count("Conv") == 4 and "Add" in kinds and kinds[-1] == "Gemm"


def test_mnist_cnn_is_mobilenet_style():
    nodes = ops("mnist_cnn")
    depthwise = [n for n in nodes if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(depthwise) == 3  # two depthwise-separable pairs and the inverted residual's
    kinds = [n.op_type for n in nodes]
    assert {"HardSwish", "HardSigmoid", "Mul", "Add", "ReduceMean"} <= set(kinds) and kinds[-1] == "Gemm"


@pytest.mark.parametrize("name", sorted(CNNS))
def test_cnn_gives_the_recorded_shifted_accuracy_on_the_committed_data(name):
    entry = INDEX[name]
    sess = ort.InferenceSession(str(MODELS / entry["onnx"]), providers=["CPUExecutionProvider"])
    test = load_npz(MODELS / entry["data"]["test"])
    x = test["x"].reshape(len(test["x"]), *CNNS[name])
    accuracy = float((sess.run(["logits"], {"x": x})[0].argmax(axis=1) == test["y"]).mean())
    assert accuracy == pytest.approx(entry["shifted_test_accuracy"], abs=1e-6)
    assert entry["pretrain_val_accuracy"] - entry["shifted_test_accuracy"] > 0.3  # the shift hurts


def test_digits_cnn_shares_the_digits_data():
    assert INDEX["digits_cnn"]["data"] == INDEX["digits"]["data"]


def test_mnist_committed_data_is_what_the_code_builds(mnist_workload):
    entry = INDEX["mnist_cnn"]
    assert mnist_workload.sizes() == entry["samples"] == {"train": 2400, "val": 600, "ft": 1000, "test": 1000}
    assert mnist_workload.config == entry["data_config"]
    for split in ("ft", "test"):
        path = MODELS / entry["data"][split]
        assert path.stat().st_size < 1_000_000
        data = load_npz(path)
        np.testing.assert_array_equal(data["x"], getattr(mnist_workload, split).x)
        np.testing.assert_array_equal(data["y"], getattr(mnist_workload, split).y)
        assert data["x"].shape[1] == 784 and set(np.unique(np.round(data["x"] * 255) / 255 - data["x"])) <= {0.0}


def test_mnist_val_accuracy_is_reproduced_from_the_code(mnist_workload):
    entry, recipe = INDEX["mnist_cnn"], RECIPES["mnist_cnn"]
    sess = ort.InferenceSession(str(MODELS / entry["onnx"]), providers=["CPUExecutionProvider"])
    x = features(mnist_workload.val, recipe)
    accuracy = float((sess.run(["logits"], {"x": x})[0].argmax(axis=1) == mnist_workload.val.y).mean())
    assert accuracy == pytest.approx(entry["pretrain_val_accuracy"], abs=1e-6)


def test_mnist_device_images_are_tilted_and_shifted_and_pretraining_images_are_not(mnist_workload):
    images, labels = mnist.read_images()
    assert images.shape == (5000, 28, 28) and np.bincount(labels).tolist() == [500] * 10
    train = mnist_workload.train
    np.testing.assert_allclose(train.x, images[train.group].reshape(len(train), -1), atol=1e-7)
    ft = mnist_workload.ft
    upright = images[ft.group].reshape(len(ft), -1)
    assert np.abs(ft.x - upright).mean() > 0.1
    expected = mnist.tilt(images[ft.group[:5]], mnist.MnistConfig())
    np.testing.assert_allclose(ft.x[:5], expected.reshape(5, -1).astype(np.float32), atol=1e-7)


def test_mnist_splits_are_disjoint_and_stratified(mnist_workload):
    groups = [set(getattr(mnist_workload, s).group.tolist()) for s in ("train", "val", "ft", "test")]
    assert sum(len(g) for g in groups) == 5000 and len(set().union(*groups)) == 5000
    for split in ("train", "val", "ft", "test"):
        counts = np.bincount(getattr(mnist_workload, split).y)
        assert counts.max() - counts.min() <= 1


def test_mnist_config_is_validated():
    with pytest.raises(ValueError, match="MnistConfig.device_fraction"):
        mnist.MnistConfig(device_fraction=1.5)


@pytest.mark.parametrize(("make", "shape"), [(digits_cnn, (1, 8, 8)), (mnist_mobilenet, (1, 28, 28))])
def test_architectures_take_channels_first_images_and_give_logits(make, shape):
    torch.manual_seed(0)
    model = make(10).eval()
    with torch.no_grad():
        assert model(torch.zeros(3, *shape)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) < 30_000


def test_without_trace_drops_node_metadata():
    model = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [], []))
    model.graph.node[0].metadata_props.add(key="pkg.torch.onnx.stack_trace", value="/somewhere/cnn.py, line 3")
    assert not without_trace(model).graph.node[0].metadata_props
