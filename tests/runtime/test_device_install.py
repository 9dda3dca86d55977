"""What a device installs stays small: the runtime wheel holds only `s2rt` and declares only
the light dependencies, and their installed closure (measured in this venv, no network)
holds nothing heavy. `bench/device_footprint.py --download` gives the aarch64 figures."""

from __future__ import annotations

import importlib.metadata as metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
BASE = {"numpy", "flatbuffers"}
EXTRAS = {"onnx": {"onnxruntime"}, "litert": {"ai-edge-litert"}, "sign": {"cryptography"}}
HEAVY = {"torch", "onnx", "tensorflow", "tensorflow-cpu", "scikit-learn", "scipy", "sympy", "pandas", "jax", "onnxscript"}
MAX_WHEEL_KB = 300
MAX_INSTALLED_KB = 1000
MAX_ONNX_CLOSURE_MB = 150  # numpy + onnxruntime dominate; 114 MB for aarch64, see the README


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "runtime"
    shutil.copytree(ROOT / "runtime", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp), str(source)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return next(tmp.glob("s2l_runtime-*.whl"))


def wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(name).decode().splitlines()
    return [Requirement(line.split(":", 1)[1]) for line in lines if line.startswith("Requires-Dist:")]


def test_the_runtime_wheel_is_small_and_holds_only_the_runtime(wheel):
    with zipfile.ZipFile(wheel) as z:
        infos = z.infolist()
    tops = {info.filename.split("/")[0] for info in infos}
    assert tops == {"s2rt", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    assert wheel.stat().st_size <= MAX_WHEEL_KB * 1000
    assert sum(i.file_size for i in infos) <= MAX_INSTALLED_KB * 1000


def test_the_runtime_wheel_declares_only_light_dependencies(wheel):
    requirements = wheel_requirements(wheel)
    base = {canonicalize_name(r.name) for r in requirements if r.marker is None}
    assert base == BASE
    for extra, names in EXTRAS.items():
        declared = {canonicalize_name(r.name) for r in requirements if r.marker is not None and r.marker.evaluate({"extra": extra})}
        assert declared == names, extra
    assert not {canonicalize_name(r.name) for r in requirements} & HEAVY


def test_the_installed_closure_of_the_onnx_runtime_is_light(wheel):
    wanted = [r.name for r in wheel_requirements(wheel) if r.marker is None or r.marker.evaluate({"extra": "onnx"})]
    closure = dependency_closure(wanted)
    assert not set(closure) & HEAVY, sorted(closure)
    total = sum(installed_size(dist) for dist in closure.values())
    assert total <= MAX_ONNX_CLOSURE_MB * 1e6, {name: round(installed_size(d) / 1e6, 1) for name, d in closure.items()}


def dependency_closure(names: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions these pull in, transitively (without their extras)."""
    found: dict[str, metadata.Distribution] = {}
    todo = [Requirement(name) for name in names]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in found or (requirement.marker is not None and not requirement.marker.evaluate({"extra": ""})):
            continue
        found[name] = metadata.distribution(requirement.name)
        todo.extend(Requirement(r) for r in found[name].requires or [])
    return found


def installed_size(dist: metadata.Distribution) -> int:
    return sum(f.size or 0 for f in dist.files or [])
