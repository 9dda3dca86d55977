"""The device installs only numpy, flatbuffers and onnxruntime: the runtime must train without torch or onnx."""

from __future__ import annotations

import json

import numpy as np
from helpers.device import run_on_device
from helpers.tiny import tiny_bundle
from s2rt.bundle import write_bundle


def test_train_and_eval_with_host_packages_unimportable(tmp_path):
    bundle = tmp_path / "tiny.s2l"
    write_bundle(tiny_bundle(), bundle)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(40, 6)).astype(np.float32), y=rng.integers(0, 3, 40))

    def s2rt(*args: str) -> dict:
        out = run_on_device(*args)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    trained = s2rt("train", str(bundle), "--data", str(tmp_path / "d.npz"), "--epochs", "3", "-o", str(tmp_path / "a.npz"), "--json")
    assert trained["epochs"] == 3 and (tmp_path / "a.npz").is_file()
    evaluated = s2rt("eval", str(bundle), "--adapters", str(tmp_path / "a.npz"), "--data", str(tmp_path / "d.npz"), "--json")
    assert evaluated["n"] == 40 and 0.0 <= evaluated["accuracy"] <= 1.0


def test_a_host_import_is_caught(tmp_path):
    out = run_on_device("--version", blocked=("numpy",))
    assert out.returncode != 0 and "blocked on the device: numpy" in out.stderr
