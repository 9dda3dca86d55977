"""What a device installs: the runtime wheel and its dependencies' wheels, and their size.

    .venv/bin/python bench/device_footprint.py                 # the runtime wheel alone (no network)
    .venv/bin/python bench/device_footprint.py --download      # + the aarch64 wheels of its dependencies

Builds the runtime wheel from a copy of `runtime/` (pip wheel, no build isolation, so no
network), then with `--download` asks pip to resolve `s2l-runtime[onnx]` and
`s2l-runtime[onnx,litert]` to binary wheels for aarch64 Linux (manylinux 2.28 and
older, CPython 3.11) and reports, per wheel, the download size and the installed size
(the sum of the files it unpacks, i.e. what lands in site-packages).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
PYTHON_VERSION = "3.11"
EXTRAS = ("onnx", "onnx,litert")


def build_runtime_wheel(out: Path) -> Path:
    """The runtime wheel, built from a copy of runtime/ so the tree gets no build/ folder."""
    with tempfile.TemporaryDirectory(prefix="s2rt-wheel-") as tmp:
        source = Path(tmp) / "runtime"
        shutil.copytree(ROOT / "runtime", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
            check=True,
        )
    return next(out.glob("s2l_runtime-*.whl"))


def installed_bytes(wheel: Path) -> int:
    with zipfile.ZipFile(wheel) as z:
        return sum(info.file_size for info in z.infolist())


def requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        metadata = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(metadata).decode().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]


def download(wheel: Path, extras: str, out: Path) -> list[Path]:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", *platforms, "--python-version", PYTHON_VERSION,
         "-d", str(out), f"{wheel}[{extras}]"],
        check=True,
    )
    return sorted(out.glob("*.whl"))


def mb(n: int) -> str:
    return f"{n / 1e6:6.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--download", action="store_true", help="also resolve the dependencies' aarch64 wheels (network)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="s2l-footprint-") as tmp:
        folder = Path(tmp)
        wheel = build_runtime_wheel(folder / "dist")
        print(f"{wheel.name}: {wheel.stat().st_size / 1e3:.0f} kB, installed {installed_bytes(wheel) / 1e3:.0f} kB")
        for requirement in requirements(wheel):
            print(f"  requires {requirement}")
        if not args.download:
            return 0
        for extras in EXTRAS:
            wheels = download(wheel, extras, folder / extras.replace(",", "-"))
            print(f"\ns2l-runtime[{extras}] for aarch64 Linux, CPython {PYTHON_VERSION}:")
            for w in wheels:
                print(f"  {w.name:78s} download {mb(w.stat().st_size)}  installed {mb(installed_bytes(w))}")
            total = sum(installed_bytes(w) for w in wheels)
            print(f"  total: download {mb(sum(w.stat().st_size for w in wheels))}, installed {mb(total)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
