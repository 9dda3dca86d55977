"""`s2conv export` of adapters that learned classes the bundle lacks (`s2rt.heads.grown`):
the exported .onnx (onnxruntime) and .tflite (LiteRT) output C + K logits equal to the
runtime's, their stored label list names the new classes, and the predicted label names
match `Model.predict`; from an ONNX segment and from a TFLite-only bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.parity import REL, assert_close, run_onnx, run_tflite, tflite_ops
from s2conv import ConvertOptions, convert
from s2conv.cli import main
from s2conv.export import LABELS_KEY, export_file, exported_labels, grown_branches
from s2conv.tflite.read import read_graph, read_metadata
from s2rt.bundle import read_bundle, write_bundle
from s2rt.errors import ConversionError, StateError
from s2rt.session import Model
from s2rt.state import save_state

MODELS = Path(__file__).resolve().parents[2] / "models"
LABELS = tuple((MODELS / "data" / "har_open_labels.txt").read_text().split())  # HAR without TRAP and ROW
NEW = ("ROW", "TRAP")


def _open_set(directory: Path, backend: str) -> tuple[Path, Path, Model, np.ndarray]:
    """har_open converted with `backend`, grown by ROW and TRAP on part of its fine-tune file."""
    path = directory / f"har_open_{backend}.s2l"
    write_bundle(convert(MODELS / "har_open_mlp.onnx", ConvertOptions(backend=backend, labels=LABELS)), path)
    ft = np.load(MODELS / "data" / "har_open_ft.npz", allow_pickle=False)
    test = np.load(MODELS / "data" / "har_open_test.npz", allow_pickle=False)
    model = Model.open(path)
    model.fine_tune(model.samples(ft["x"][:600], ft["y"][:600], allow_new_classes=True), epochs=6, seed=0)
    adapters = directory / f"grown_{backend}.npz"
    model.save_adapters(adapters)
    return path, adapters, model, test["x"][:200].astype(np.float32)


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    return _open_set(tmp_path_factory.mktemp("grown"), "both")


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_export_equals_runtime_logits_and_names_the_new_classes(grown, tmp_path, suffix):
    path, adapters, model, x = grown
    assert model.labels == (*LABELS, *NEW)
    out = tmp_path / f"tuned{suffix}"
    export_file(read_bundle(path), adapters, out)
    got = run_onnx(out.read_bytes(), x) if suffix == ".onnx" else run_tflite(out.read_bytes(), x)
    want = model.logits(x)
    assert want.shape == (len(x), len(LABELS) + 2)
    assert_close(got, {"logits": want}, REL)
    labels = exported_labels(out)
    assert labels == (*LABELS, *NEW)
    predicted = np.asarray(labels)[got["logits"].argmax(axis=1)]
    np.testing.assert_array_equal(predicted, model.predict(x))
    assert set(NEW) <= set(predicted)  # the new classes are predicted, not only present as columns


def test_grown_head_is_one_linear_branch_over_c_plus_k_logits(grown):
    path, adapters, _, _ = grown
    bundle = read_bundle(path)
    (branch,) = grown_branches(bundle, adapters, 2)
    C, K = len(LABELS), 2
    assert [w.shape for w in branch.weights] == [(C + K, t.size) for t in bundle.taps]
    assert branch.bias is not None and not branch.bias[:C].any() and branch.bias[C:].any()
    assert not branch.relu and branch.out is None


def test_cli_exports_grown_adapters(grown, tmp_path, capsys):
    path, adapters, model, x = grown
    out = tmp_path / "t.onnx"
    assert main(["export", str(path), "--adapters", str(adapters), "-o", str(out)]) == 0
    assert "wrote tuned model" in capsys.readouterr().out
    tuned = onnx.load(out)
    assert [d.dim_value for d in tuned.graph.output[0].type.tensor_type.shape.dim][1:] == [len(LABELS) + 2]
    assert json.loads({m.key: m.value for m in tuned.metadata_props}[LABELS_KEY]) == [*LABELS, *NEW]


def test_tflite_only_bundle_exports_grown_adapters(tmp_path):
    """No ONNX segment: the widening FULLY_CONNECTED and the head are appended to the TFLite segment."""
    path, adapters, model, x = _open_set(tmp_path, "tflite")
    assert model.frozen.backend.name == "tflite"
    export_file(read_bundle(path), adapters, tmp_path / "t.tflite")
    data = (tmp_path / "t.tflite").read_bytes()
    frozen, widen, head = ["SUB", "DIV"] + ["FULLY_CONNECTED"] * 3, ["FULLY_CONNECTED"], ["FULLY_CONNECTED"] * 2 + ["ADD"]
    assert tflite_ops(data) == frozen + widen + head + ["FULLY_CONNECTED", "ADD", "ADD"]
    got = run_tflite(data, x)
    assert_close(got, {"logits": model.logits(x)}, REL)
    assert exported_labels(tmp_path / "t.tflite") == (*LABELS, *NEW)


def test_plain_exports_carry_the_bundle_labels(grown, tmp_path):
    path, _, _, x = grown
    plain = Model.open(path)
    ft = np.load(MODELS / "data" / "har_open_ft.npz", allow_pickle=False)
    known = np.isin(ft["y"], LABELS)
    plain.fine_tune(plain.samples(ft["x"][known][:200], ft["y"][known][:200]), epochs=2, seed=0)
    plain.save_adapters(tmp_path / "a.npz")
    for suffix in (".onnx", ".tflite"):
        export_file(read_bundle(path), tmp_path / "a.npz", tmp_path / f"t{suffix}")
        assert exported_labels(tmp_path / f"t{suffix}") == LABELS
    assert read_graph((tmp_path / "t.tflite").read_bytes()).metadata == read_metadata((tmp_path / "t.tflite").read_bytes())


def test_grown_file_with_wrong_row_count_is_refused(grown, tmp_path):
    path, adapters, model, _ = grown
    state = model.head.state_dict()
    state["new.W"] = state["new.W"][:1]  # one new row for two new labels
    save_state(tmp_path / "bad.npz", state, model.bundle, "skip2lora", new_labels=list(NEW))
    with pytest.raises(StateError, match=r"bad.npz: adapter state array new.W: expected finite \(2, 96\), found \(1, 96\)"):
        export_file(read_bundle(path), tmp_path / "bad.npz", tmp_path / "t.onnx")


def test_a_file_without_labels_metadata_is_named(tmp_path):
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(ConversionError, match=r"m.onnx: has no s2l.labels metadata"):
        exported_labels(tmp_path / "m.onnx")


@pytest.mark.parametrize("backend", ["both", "tflite"])
def test_output_activation_covers_the_new_classes(tmp_path, backend):
    """A source model ending in Softmax: the export's softmax runs over C + K probabilities."""
    from test_export import softmax_mlp

    path = tmp_path / "sm.s2l"
    write_bundle(convert(softmax_mlp(tmp_path), ConvertOptions(backend=backend)), path)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    names = np.array(["class_0", "class_1", "class_2", "novel"])[rng.integers(0, 4, 60)]
    model = Model.open(path)
    model.fine_tune(model.samples(x, names, allow_new_classes=True), epochs=3, seed=0)
    model.save_adapters(tmp_path / "a.npz")
    for suffix in (".onnx", ".tflite") if backend == "both" else (".tflite",):
        out = tmp_path / f"t{suffix}"
        export_file(read_bundle(path), tmp_path / "a.npz", out)
        got = run_onnx(out.read_bytes(), x) if suffix == ".onnx" else run_tflite(out.read_bytes(), x)
        assert list(got) == ["probabilities"] and got["probabilities"].shape == (60, 4)
        np.testing.assert_allclose(got["probabilities"], model.predict_proba(x), rtol=REL, atol=REL)
        assert exported_labels(out) == ("class_0", "class_1", "class_2", "novel")
