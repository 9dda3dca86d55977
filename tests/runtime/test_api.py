"""The public Python API: `from s2rt import Model`, the bundle's train defaults applied as
`s2rt train` applies them, and `predict` / `predict_proba` in scikit-learn's habit."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import s2rt
from helpers.tiny import tiny_bundle
from s2rt.bundle import Optimizer, TrainDefaults, write_bundle
from s2rt.errors import RuntimeInputError
from s2rt.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = TrainDefaults(Optimizer.SGD, 0.2, 3, 8)  # unlike TrainConfig's own defaults


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("api")
    bundle = tiny_bundle()
    write_bundle(dataclasses.replace(bundle, head=dataclasses.replace(bundle.head, defaults=DEFAULTS)), folder / "b.s2l")
    rng = np.random.default_rng(0)
    np.savez(folder / "d.npz", x=rng.normal(size=(48, 6)).astype(np.float32), y=rng.integers(0, 3, 48))
    return folder


def data(files: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(files / "d.npz") as d:
        return d["x"], d["y"]


def test_import_s2rt_is_cheap_and_the_entry_points_load_on_use():
    code = "import s2rt, sys; print(sorted(m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('numpy', 'onnxruntime')))"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    from s2rt.session import Model

    assert s2rt.Model is Model and s2rt.TrainConfig is TrainConfig
    assert {"Model", "TrainConfig", "Samples"} <= set(dir(s2rt))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = s2rt.Nope


def test_train_config_is_the_bundles_defaults_with_overrides(files):
    model = s2rt.Model.open(files / "b.s2l")
    config = model.train_config()
    assert (config.optimizer, config.learning_rate, config.epochs, config.batch_size) == (Optimizer.SGD, pytest.approx(0.2), 3, 8)
    assert model.train_config(epochs=7, learning_rate=None).epochs == 7
    assert model.train_config(learning_rate=None).learning_rate == pytest.approx(0.2)


def test_fine_tune_without_a_config_trains_as_the_cli_does(files, tmp_path):
    x, y = data(files)
    model = s2rt.Model.open(files / "b.s2l")
    result = model.fine_tune(model.samples(x, y))
    assert result.report.epochs_run == DEFAULTS.epochs
    cli = subprocess.run(
        [sys.executable, "-m", "s2rt", "train", str(files / "b.s2l"), "--data", str(files / "d.npz"), "-o", str(tmp_path / "a.npz")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "runtime")},
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    from_cli = s2rt.Model.open(files / "b.s2l", adapters=tmp_path / "a.npz")
    np.testing.assert_allclose(model.logits(x), from_cli.logits(x), rtol=1e-6, atol=1e-6)
    plain = s2rt.Model.open(files / "b.s2l")
    plain.fine_tune(plain.samples(x, y), TrainConfig())  # TrainConfig's own defaults differ from the bundle's
    assert not np.allclose(plain.logits(x), model.logits(x), atol=1e-4)


def test_fine_tune_takes_a_config_or_overrides_not_both(files):
    x, y = data(files)
    model = s2rt.Model.open(files / "b.s2l")
    with pytest.raises(TypeError, match="not both"):
        model.fine_tune(model.samples(x, y), TrainConfig(), epochs=2)
    assert model.fine_tune(model.samples(x, y), epochs=2).report.epochs_run == 2


def test_predict_gives_labels_and_predict_proba_probabilities(files):
    x, y = data(files)
    model = s2rt.Model.open(files / "b.s2l")
    labels = model.predict(x)
    proba = model.predict_proba(x.astype(np.float64))  # any numeric dtype
    assert labels.shape == (len(x),) and set(labels) <= set(model.labels)
    assert proba.shape == (len(x), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    assert list(labels) == [model.labels[i] for i in proba.argmax(axis=1)]
    assert model.predict(x[:1].tolist())[0] == labels[0]


def test_samples_take_labels_by_name_and_check_the_arrays(files):
    x, y = data(files)
    model = s2rt.Model.open(files / "b.s2l")
    by_name = model.samples(x, [model.labels[i] for i in y])
    np.testing.assert_array_equal(by_name.y, y)
    with pytest.raises(RuntimeInputError, match="not among the bundle's labels"):
        model.samples(x[:2], ["class_0", "dog"])
    with pytest.raises(RuntimeInputError, match="expects"):
        model.samples(x[:, :5], y)
    with pytest.raises(RuntimeInputError, match="outside the bundle's classes"):
        model.samples(x[:1], [7])


def test_model_open_names_an_onnx_model(tmp_path):
    (tmp_path / "m.onnx").write_bytes(bytes(tiny_bundle().segments[0].model))
    with pytest.raises(s2rt.S2LError, match="is an ONNX model, not an s2l bundle: convert it first"):
        s2rt.Model.open(tmp_path / "m.onnx")
