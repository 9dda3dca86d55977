"""Run `s2rt` as a device would: in a fresh interpreter where host-only packages cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOST_ONLY = ("torch", "onnx", "tensorflow", "sklearn", "scipy", "onnxscript")

_SCRIPT = """
import sys
blocked = {blocked!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError("blocked on the device: " + name)
sys.meta_path.insert(0, Block())
from s2rt.cli import main
code = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in blocked)
assert not leaked, leaked
sys.exit(code)
"""


def run_on_device(*args: str, blocked: tuple[str, ...] = HOST_ONLY) -> subprocess.CompletedProcess[str]:
    """`s2rt ARGS` with `blocked` packages unimportable; also fails if any of them got imported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(blocked=blocked), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
