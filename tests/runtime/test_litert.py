"""The LiteRT backend: TFLite segment from bytes, outputs by name, threads, the
ai_edge_litert -> tflite_runtime fallback, any batch size, and `auto` selection."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from ai_edge_litert.interpreter import Interpreter as RealInterpreter
from helpers.device import HOST_ONLY, run_on_device
from helpers.tiny import tiny_bundle, tiny_reference, tiny_weights
from s2conv.tflite import onnx_to_tflite
from s2rt.backend import open_backend
from s2rt.backend.litert import LiteRTBackend
from s2rt.bundle import Segment, SegmentBackend, write_bundle
from s2rt.data import Samples
from s2rt.errors import BackendError
from s2rt.frozen import FrozenModel
from s2rt.session import Model
from s2rt.trainer import TrainConfig

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


def with_tflite(bundle, keep_onnx: bool = True, reorder_outputs: bool = False):
    """The bundle with a TFLite segment emitted from its ONNX one (and the ONNX one kept or not)."""
    onnx_segment = bundle.segment(SegmentBackend.ONNX)
    model = onnx.load_from_string(bytes(onnx_segment.model))
    if reorder_outputs:  # logits first, taps reversed: positions must not matter
        outputs = list(model.graph.output)[::-1]
        del model.graph.output[:]
        model.graph.output.extend(outputs)
    tflite = Segment(SegmentBackend.TFLITE, onnx_to_tflite(model), onnx_segment.input_name, onnx_segment.logits_output)
    return dataclasses.replace(bundle, segments=(onnx_segment, tflite) if keep_onnx else (tflite,))


@pytest.fixture
def weights():
    return tiny_weights()


@pytest.fixture
def bundle(weights):
    return with_tflite(tiny_bundle(weights))


def samples(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 6)).astype(np.float32)


def test_outputs_by_name_match_numpy(bundle, weights):
    backend = open_backend(bundle, "tflite")
    assert isinstance(backend, LiteRTBackend) and backend.implementation == "ai_edge_litert"
    x = samples(5)
    out = backend.run(x)
    assert sorted(out) == ["s2l.logits", "s2l.tap.0", "s2l.tap.1"]
    fused, logits = tiny_reference(weights, x)
    np.testing.assert_allclose(out["s2l.tap.0"], x)
    np.testing.assert_allclose(out["s2l.tap.1"], fused[:, 6:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["s2l.logits"], logits, rtol=1e-5, atol=1e-6)


def test_output_order_in_the_file_does_not_matter(weights):
    bundle = with_tflite(tiny_bundle(weights), keep_onnx=False, reorder_outputs=True)
    backend = open_backend(bundle, "tflite")
    assert list(backend.outputs)[0] == "s2l.logits"
    x = samples(4)
    fused, logits = FrozenModel(bundle, backend).run(x)
    want_fused, want_logits = tiny_reference(weights, x)
    np.testing.assert_allclose(fused, want_fused, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_batch_sizes_equal_onnxruntime(bundle, batch):
    tflite, onnx_backend = open_backend(bundle, "tflite"), open_backend(bundle, "onnx")
    x = samples(batch, seed=batch)
    got, want = tflite.run(x), onnx_backend.run(x)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_resizes_only_when_the_batch_size_changes(bundle, weights):
    backend = open_backend(bundle, "tflite")
    assert isinstance(backend, LiteRTBackend)
    for n in (3, 3, 9, 1, 9):
        x = samples(n, seed=n)
        np.testing.assert_allclose(backend.run(x)["s2l.logits"], tiny_reference(weights, x)[1], rtol=1e-5, atol=1e-6)
        assert backend.batch == n


def test_empty_batch(bundle):
    out = open_backend(bundle, "tflite").run(np.zeros((0, 6), np.float32))
    assert {k: v.shape for k, v in out.items()} == {"s2l.tap.0": (0, 6), "s2l.tap.1": (0, 5), "s2l.logits": (0, 3)}


class _Recording(RealInterpreter):
    calls: list[dict] = []

    def __init__(self, **kwargs):
        type(self).calls.append(kwargs)
        super().__init__(**kwargs)


def _fake_module(monkeypatch, name: str) -> None:
    package, _, _ = name.partition(".")
    monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
    monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(Interpreter=_Recording))


def test_threads_reach_the_interpreter(bundle, monkeypatch):
    _Recording.calls = []
    _fake_module(monkeypatch, "ai_edge_litert.interpreter")
    backend = open_backend(bundle, "tflite", threads=3)
    assert _Recording.calls[-1]["num_threads"] == 3 and backend.threads == 3
    assert backend.run(samples(2))["s2l.logits"].shape == (2, 3)


def test_falls_back_to_tflite_runtime(bundle, weights, monkeypatch):
    _Recording.calls = []
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import raises ImportError
    _fake_module(monkeypatch, "tflite_runtime.interpreter")
    backend = open_backend(bundle, "tflite", threads=2)
    assert isinstance(backend, LiteRTBackend) and backend.implementation == "tflite_runtime"
    assert _Recording.calls[-1]["num_threads"] == 2
    x = samples(3)
    np.testing.assert_allclose(backend.run(x)["s2l.logits"], tiny_reference(weights, x)[1], rtol=1e-5, atol=1e-6)


def test_neither_interpreter_installed(bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(BackendError, match=r"tflite: not installed \(ai_edge_litert or tflite_runtime\)"):
        open_backend(bundle, "tflite")
    only_tflite = dataclasses.replace(bundle, segments=(bundle.segment(SegmentBackend.TFLITE),))
    with pytest.raises(BackendError, match="onnx: the bundle has no ONNX segment; tflite: not installed"):
        open_backend(only_tflite, "auto")


def test_auto_prefers_onnx_then_takes_what_the_bundle_has(bundle, weights):
    assert open_backend(bundle, "auto").name == "onnx"
    only_tflite = dataclasses.replace(bundle, segments=(bundle.segment(SegmentBackend.TFLITE),))
    assert open_backend(only_tflite, "auto").name == "tflite"
    with pytest.raises(BackendError, match="the bundle has no TFLITE segment"):
        open_backend(tiny_bundle(weights), "tflite")


def test_corrupt_segment_is_a_backend_error(bundle):
    broken = Segment(SegmentBackend.TFLITE, b"\x00" * 64, "x", "s2l.logits")
    with pytest.raises(BackendError, match="cannot load the frozen segment"):
        open_backend(dataclasses.replace(bundle, segments=(broken,)), "tflite")


def test_fine_tuning_through_litert_equals_onnxruntime(bundle, tmp_path):
    write_bundle(bundle, tmp_path / "b.s2l")
    rng = np.random.default_rng(0)
    data = Samples(samples(50), rng.integers(0, 3, 50))
    trained = {}
    for backend in ("onnx", "tflite"):
        model = Model.open(tmp_path / "b.s2l", backend=backend)
        model.fine_tune(data, TrainConfig(epochs=5, batch_size=8, seed=0))
        trained[backend] = model.head.per_tap()
    for (a1, b1), (a2, b2) in zip(trained["onnx"], trained["tflite"]):
        np.testing.assert_allclose(a2, a1, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(b2, b1, rtol=1e-4, atol=1e-6)


def test_device_with_litert_only(bundle, tmp_path):
    """No onnxruntime, onnx or tensorflow: `auto` finds the TFLite segment and trains on it."""
    path = tmp_path / "b.s2l"
    write_bundle(bundle, path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=samples(30), y=rng.integers(0, 3, 30))
    args = ["train", str(path), "--data", str(tmp_path / "d.npz"), "--epochs", "2", "-o", str(tmp_path / "a.npz"), "--json"]
    run = run_on_device(*args, blocked=(*HOST_ONLY, "onnxruntime"))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["epochs"] == 2
    assert "XNNPACK" not in run.stderr, run.stderr  # LiteRT's delegate notice stays off the terminal


def test_only_the_delegate_notice_is_kept_from_stderr_and_only_the_first_time():
    script = (
        "import os\n"
        "from s2rt.backend.litert import DELEGATE_NOTICE, _without_delegate_notice\n"
        "with _without_delegate_notice():\n"
        "    os.write(2, b'before\\n' + DELEGATE_NOTICE + b'\\nafter\\n')\n"
        "with _without_delegate_notice():\n"
        "    os.write(2, DELEGATE_NOTICE + b'\\n')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(RUNTIME)}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=False, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stderr == b"before\nafter\nINFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"


def test_s2rt_predict_with_either_backend(bundle, tmp_path, capsys):
    from s2rt.cli import main as s2rt

    write_bundle(bundle, tmp_path / "b.s2l")
    np.savez(tmp_path / "d.npz", x=samples(6))
    predictions = {}
    for backend in ("onnx", "tflite"):
        capsys.readouterr()
        assert s2rt(["predict", str(tmp_path / "b.s2l"), "--data", str(tmp_path / "d.npz"), "--backend", backend, "--json"]) == 0
        predictions[backend] = json.loads(capsys.readouterr().out)["predictions"]
    assert [p["class"] for p in predictions["tflite"]] == [p["class"] for p in predictions["onnx"]]
    np.testing.assert_allclose(
        [p["probabilities"] for p in predictions["tflite"]], [p["probabilities"] for p in predictions["onnx"]], atol=2e-6
    )
