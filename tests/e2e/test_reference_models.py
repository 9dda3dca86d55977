"""Whole runs on the shipped reference models: convert, fine-tune on the shifted device data, evaluate.

Bounds are a little under what was measured with these fixed seeds (see the README):
HAR 0.712 -> 0.96, digits 0.525 -> 0.85 after 20 epochs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from s2conv import ConvertOptions, convert
from s2rt.bundle import read_bundle, write_bundle
from s2rt.data import load_samples
from s2rt.session import Model
from s2rt.trainer import TrainConfig

MODELS = Path(__file__).resolve().parents[2] / "models"

# model, labels, accuracy before (exact, recorded in models.json), minimum after 20 epochs
CASES = {
    "har": ("har_mlp.onnx", 0.712, 0.93),
    "digits": ("digits_mlp.onnx", 0.525, 0.78),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def converted(request, tmp_path_factory):
    name = request.param
    onnx_file, _, _ = CASES[name]
    labels = tuple((MODELS / "data" / f"{name}_labels.txt").read_text().split())
    path = tmp_path_factory.mktemp(name) / f"{name}.s2l"
    write_bundle(convert(MODELS / onnx_file, ConvertOptions(labels=labels)), path)
    return name, path


def test_fine_tuning_recovers_shifted_accuracy(converted):
    name, path = converted
    _, before_expected, after_minimum = CASES[name]
    model = Model.open(path)
    test = load_samples(MODELS / "data" / f"{name}_test.npz", model.bundle.input, model.bundle.head.num_outputs)
    ft = load_samples(MODELS / "data" / f"{name}_ft.npz", model.bundle.input, model.bundle.head.num_outputs)
    before = model.evaluate(test)["accuracy"]
    assert before == pytest.approx(before_expected, abs=1e-3)
    result = model.fine_tune(ft, TrainConfig(epochs=20, seed=0))
    after = model.evaluate(test)["accuracy"]
    assert after >= after_minimum, f"{name}: {before:.3f} -> {after:.3f}"
    assert result.cache_misses == len(ft.x) and result.cache_hits == 19 * len(ft.x)


def test_frozen_logits_equal_the_original_model(converted):
    name, path = converted
    onnx_file, _, _ = CASES[name]
    bundle = read_bundle(path)
    x = load_samples(MODELS / "data" / f"{name}_test.npz", bundle.input).x[:64]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    original = ort.InferenceSession(str(MODELS / onnx_file), options, providers=["CPUExecutionProvider"])
    (want,) = original.run(None, {original.get_inputs()[0].name: x})
    model = Model(bundle)
    _, frozen_logits = model.frozen.run(x)
    np.testing.assert_allclose(frozen_logits, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.logits(x), want, rtol=1e-5, atol=1e-5)  # B = 0: the head changes nothing
