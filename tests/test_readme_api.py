"""The README's "Python API" example runs as written (so it stays true)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section holds one python block"
    return blocks[0]


def test_the_readme_python_example_runs(tmp_path):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 14
    (tmp_path / "models").symlink_to(ROOT / "models")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("runtime", "converter"))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    before = float(re.search(r"^before ([0-9.]+)$", result.stdout, re.M).group(1))
    after = float(re.search(r"^after ([0-9.]+)$", result.stdout, re.M).group(1))
    assert after > before + 0.1, result.stdout  # the shifted HAR data: fine-tuning recovers accuracy
    labels = set((ROOT / "models" / "data" / "har_labels.txt").read_text().split())
    predicted = re.findall(r"'([A-Z]+)'", result.stdout)
    assert len(predicted) == 3 and set(predicted) <= labels
    assert (tmp_path / "har.s2l").is_file() and (tmp_path / "har_adapters.npz").is_file()
