"""The committed artefacts in models/: they load without pickle, match models.json and the code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from s2models.data import digits, fan, har

MODELS = Path(__file__).resolve().parents[2] / "models"
INDEX = json.loads((MODELS / "models.json").read_text())
LOADERS = {"har": har.load, "digits": digits.load, "fan": fan.load}
SOURCES = {"har": ["recording", "subject"]}  # who recorded each sample, beside x and y (Split.sources)
EXPECTED_OPS = {
    "har": ["Sub", "Div", "Gemm", "Relu", "Gemm", "Relu", "Gemm"],
    "digits": ["Gemm", "Relu", "Gemm", "Relu", "Gemm"],
    "fan": ["Sub", "Div", "Gemm", "Relu", "Gemm", "Relu", "Gemm"],
}


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def session(name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(MODELS / INDEX[name]["onnx"]), options, providers=["CPUExecutionProvider"])


def accuracy(sess: ort.InferenceSession, x: np.ndarray, y: np.ndarray) -> float:
    return float((sess.run(["logits"], {"x": x})[0].argmax(axis=1) == y).mean())


def test_index_lists_the_mlp_workloads():
    assert {"digits", "fan", "har"} <= set(INDEX)


@pytest.mark.parametrize("name", sorted(LOADERS))
@pytest.mark.parametrize("split", ["ft", "test"])
def test_device_npz_has_the_documented_arrays(name, split):
    entry = INDEX[name]
    path = MODELS / entry["data"][split]
    assert path.stat().st_size < 1_000_000
    data = load_npz(path)
    assert sorted(data) == sorted(["labels", "x", "y", *SOURCES.get(name, [])])
    n, features = data["x"].shape
    assert all(data[s].dtype == np.int64 and data[s].shape == (n,) for s in SOURCES.get(name, []))
    assert data["x"].dtype == np.float32 and features == entry["input"]["shape"][1]
    assert n == entry["samples"][split] and data["y"].shape == (n,) and data["y"].dtype == np.int64
    assert data["labels"].dtype.kind == "U" and data["labels"].tolist() == entry["classes"]
    assert set(data["y"].tolist()) == set(range(len(entry["classes"])))
    assert (MODELS / entry["data"]["labels"]).read_text().split("\n")[:-1] == entry["classes"]


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_onnx_signature_ops_and_provenance(name):
    entry = INDEX[name]
    path = MODELS / entry["onnx"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert model.producer_name == "s2models" and model.opset_import[0].version == 18
    assert [n.op_type for n in model.graph.node] == EXPECTED_OPS[name]
    assert json.loads({p.key: p.value for p in model.metadata_props}["labels"]) == entry["classes"]
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    assert graph_input.name == "x" and graph_output.name == "logits"
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == ["batch", entry["input"]["shape"][1]]


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_onnx_gives_the_recorded_accuracies(name):
    entry, sess = INDEX[name], session(name)
    test = load_npz(MODELS / entry["data"]["test"])
    assert accuracy(sess, test["x"], test["y"]) == pytest.approx(entry["shifted_test_accuracy"], abs=1e-6)
    val = LOADERS[name]().val
    assert accuracy(sess, val.x, val.y) == pytest.approx(entry["pretrain_val_accuracy"], abs=1e-6)
    assert entry["pretrain_val_accuracy"] - entry["shifted_test_accuracy"] > 0.2  # the shift hurts


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_committed_data_is_what_the_code_builds(name):
    entry, workload = INDEX[name], LOADERS[name]()
    assert workload.sizes() == entry["samples"] and workload.config == entry["data_config"]
    for split in ("ft", "test"):
        data = load_npz(MODELS / entry["data"][split])
        built = getattr(workload, split)
        np.testing.assert_allclose(data["x"], built.x, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(data["y"], built.y)
        assert sorted(built.sources) == SOURCES.get(name, [])
        for source, ids in built.sources.items():
            np.testing.assert_array_equal(data[source], ids)
