"""The device installs only numpy, flatbuffers and onnxruntime: the runtime must train without torch or onnx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers.tiny import tiny_bundle
from s2rt.bundle import write_bundle

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "onnx", "tensorflow", "sklearn", "scipy", "onnxscript")

BLOCKER = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("blocked on the device: " + name)
sys.meta_path.insert(0, Block())
from s2rt.cli import main
code = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
assert not leaked, leaked
sys.exit(code)
"""


def test_train_and_eval_with_host_packages_unimportable(tmp_path):
    bundle = tmp_path / "tiny.s2l"
    write_bundle(tiny_bundle(), bundle)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(40, 6)).astype(np.float32), y=rng.integers(0, 3, 40))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}

    def s2rt(*args: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-c", BLOCKER, *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    trained = s2rt("train", str(bundle), "--data", str(tmp_path / "d.npz"), "--epochs", "3", "-o", str(tmp_path / "a.npz"), "--json")
    assert trained["epochs"] == 3 and (tmp_path / "a.npz").is_file()
    evaluated = s2rt("eval", str(bundle), "--adapters", str(tmp_path / "a.npz"), "--data", str(tmp_path / "d.npz"), "--json")
    assert evaluated["n"] == 40 and 0.0 <= evaluated["accuracy"] <= 1.0
