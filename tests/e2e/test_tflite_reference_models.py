"""Every reference model in models/models.json, converted with `--backend both`: the TFLite
segment gives the ONNX segment's outputs (1e-5 of their scale), fine-tuning through LiteRT
gives onnxruntime's adapters (same seed, 1e-4), and the exported tuned model gives the
runtime's tuned outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.parity import REL, assert_close, run_onnx, run_tflite
from s2conv.cli import main
from s2conv.export import export_file
from s2rt.bundle import SegmentBackend, read_bundle
from s2rt.data import load_samples
from s2rt.session import Model
from s2rt.trainer import TrainConfig

MODELS = Path(__file__).resolve().parents[2] / "models"
REFERENCE = json.loads((MODELS / "models.json").read_text())
ADAPTER_TOLERANCE = 1e-4
TRAIN = TrainConfig(epochs=5, batch_size=32, seed=0)


@pytest.fixture(scope="module", params=sorted(REFERENCE))
def converted(request, tmp_path_factory):
    name = request.param
    entry = REFERENCE[name]
    path = tmp_path_factory.mktemp(name) / f"{name}.s2l"
    assert main([str(MODELS / entry["onnx"]), "-o", str(path), "--backend", "both"]) == 0
    bundle = read_bundle(path)
    ft = load_samples(MODELS / entry["data"]["ft"], bundle.input, bundle.head.num_outputs)
    test = load_samples(MODELS / entry["data"]["test"], bundle.input, bundle.head.num_outputs)
    return name, path, ft, test


def test_bundle_has_both_segments(converted, capsys):
    _, path, _, _ = converted
    capsys.readouterr()
    assert main(["inspect", str(path), "--json"]) == 0
    segments = json.loads(capsys.readouterr().out)["segments"]
    assert [s["backend"] for s in segments] == ["onnx", "tflite"]
    assert all(s["size_bytes"] > 0 and s["logits_output"] == "s2l.logits" for s in segments)


def test_tflite_frozen_outputs_equal_onnx(converted):
    _, path, _, test = converted
    x = test.x[:256]
    taps = {}
    logits = {}
    for backend in ("onnx", "tflite"):
        taps[backend], logits[backend] = Model.open(path, backend=backend).frozen.run(x)
    assert_close({"taps": taps["tflite"], "logits": logits["tflite"]}, {"taps": taps["onnx"], "logits": logits["onnx"]}, REL)


def test_fine_tuning_through_litert_gives_the_same_adapters(converted, tmp_path):
    name, path, ft, test = converted
    adapters = {}
    for backend in ("onnx", "tflite"):
        model = Model.open(path, backend=backend)
        model.fine_tune(ft, TRAIN)
        adapters[backend] = model.head.per_tap()
        model.save_adapters(tmp_path / f"{backend}.npz")
    for t, ((a1, b1), (a2, b2)) in enumerate(zip(adapters["onnx"], adapters["tflite"])):
        for label, got, want in ((f"A.{t}", a2, a1), (f"B.{t}", b2, b1)):
            scale = float(np.abs(want).max())
            np.testing.assert_allclose(got, want, rtol=ADAPTER_TOLERANCE, atol=ADAPTER_TOLERANCE * scale, err_msg=f"{name} {label}")

    # The tuned model exported from those adapters gives the runtime's tuned outputs.
    bundle = read_bundle(path)
    tuned = Model.open(path, backend="onnx", adapters=tmp_path / "onnx.npz")
    want = tuned.logits(test.x[:128])
    for suffix in (".onnx", ".tflite"):
        out = tmp_path / f"tuned{suffix}"
        export_file(bundle, tmp_path / "onnx.npz", out)
        run = run_onnx if suffix == ".onnx" else run_tflite
        got = run(out.read_bytes(), test.x[:128])
        (values,) = got.values()
        assert_close({"tuned": values}, {"tuned": want})


def test_tflite_only_bundle_is_smaller_and_runs(converted, tmp_path):
    name, path, _, test = converted
    entry = REFERENCE[name]
    sizes = {}
    for backend in ("onnx", "tflite", "both"):
        out = tmp_path / f"{backend}.s2l"
        assert main([str(MODELS / entry["onnx"]), "-o", str(out), "--backend", backend]) == 0
        sizes[backend] = out.stat().st_size
    assert sizes["both"] > max(sizes["onnx"], sizes["tflite"])
    only = read_bundle(tmp_path / "tflite.s2l")
    assert [s.backend for s in only.segments] == [SegmentBackend.TFLITE]
    model = Model.open(tmp_path / "tflite.s2l")  # auto: the only segment there is
    assert model.frozen.backend.name == "tflite"
    _, want = Model.open(path, backend="onnx").frozen.run(test.x[:32])
    np.testing.assert_allclose(model.frozen.run(test.x[:32])[1], want, rtol=REL, atol=REL * float(np.abs(want).max()))
