"""The README's workflow through the real console entry points, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("runtime", "converter"))}


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", *args], env=ENV, capture_output=True, text=True, timeout=300, check=False)
    if ok:
        assert out.returncode == 0, out.stderr
    return out


def test_convert_inspect_train_eval_predict(tmp_path):
    bundle = tmp_path / "har.s2l"
    labels = ROOT / "models" / "data" / "har_labels.txt"
    run("s2conv", str(ROOT / "models" / "har_mlp.onnx"), "-o", str(bundle), "--labels-file", str(labels), "--cache-dtype", "float16")
    info = json.loads(run("s2conv", "inspect", str(bundle), "--json").stdout)
    assert [t["shape"] for t in info["taps"]] == [[48], [96], [96]]

    ft, test = (str(ROOT / "models" / "data" / f"har_{s}.npz") for s in ("ft", "test"))
    before = json.loads(run("s2rt", "eval", str(bundle), "--data", test, "--json").stdout)
    adapters = tmp_path / "adapters.npz"
    trained = json.loads(
        run("s2rt", "train", str(bundle), "--data", ft, "--epochs", "10", "-o", str(adapters), "--json").stdout
    )
    assert trained["epochs"] == 10 and trained["cache_misses"] == trained["n"]
    after = json.loads(run("s2rt", "eval", str(bundle), "--adapters", str(adapters), "--data", test, "--json").stdout)
    assert after["accuracy"] > before["accuracy"] + 0.15

    predictions = json.loads(run("s2rt", "predict", str(bundle), "--adapters", str(adapters), "--data", test, "--json").stdout)
    rows = predictions["predictions"]
    y = np.load(test)["y"]
    assert len(rows) == len(y)
    assert np.mean([r["class"] for r in rows] == y) == after["accuracy"]
    assert rows[0]["label"] in labels.read_text().split()


def test_errors_are_one_line_without_traceback(tmp_path):
    (tmp_path / "bad.s2l").write_bytes(b"not a bundle at all")
    out = run("s2rt", "eval", str(tmp_path / "bad.s2l"), "--data", "x.npz", ok=False)
    assert out.returncode == 1
    assert out.stderr.startswith("s2rt: error: ") and "not an s2l bundle" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
