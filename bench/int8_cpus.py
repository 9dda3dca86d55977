"""int8 across CPUs: the same int8 bundles fine-tuned on this CPU and on emulated x86 CPUs.

    .venv/bin/python bench/int8_cpus.py [--emulate Haswell Nehalem] [--weights8]

Builds float and int8 ONNX bundles of the HAR and digits MLPs (20 epochs) and the digits
CNN (2x2 taps, 5 epochs; calibration: 1,000 pretraining inputs), then, for each CPU,
fine-tunes every bundle with seed 0 and prints the shifted-test accuracy and the largest
error of a frozen output (taps, logits) on the test inputs relative to the float bundle's.
`--emulate CPU` runs the same evaluation again under `qemu-x86_64 -cpu CPU` (Debian's
qemu-user; QEMU 7.2 emulates AVX2 but not AVX-512): Haswell is AVX2 without VNNI, Nehalem
SSE4.2. `--weights8` builds the int8 bundles with 8-bit weights instead of the 7-bit ones
s2conv writes (the scheme before: onnxruntime's quantize_static without reduce_range), to
show what it did on CPUs without VNNI.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for folder in ("runtime", "converter", "models"):
    sys.path.insert(0, str(ROOT / folder))

from s2rt.backend.onnx import OnnxBackend  # noqa: E402
from s2rt.bundle import SegmentBackend, parse_bundle, serialize_bundle  # noqa: E402
from s2rt.data import load_samples  # noqa: E402
from s2rt.session import Model  # noqa: E402
from s2rt.trainer import TrainConfig  # noqa: E402

# model -> (workload, convert options, calibration samples or None for all, epochs)
CASES = {"har_mlp": ("har", {}, None, 20), "digits_mlp": ("digits", {}, None, 20), "digits_cnn": ("digits", {"tap_pool": 2}, 1000, 5)}


def build(folder: Path, weights8: bool) -> None:
    """Write `<model>.float.s2l` and `<model>.int8.s2l` for every case into `folder`."""
    import onnxruntime.quantization as quantization
    from s2conv import ConvertOptions, convert
    from s2models import data

    if weights8:  # the scheme before 7-bit weights, for comparison only
        static = quantization.quantize_static
        quantization.quantize_static = lambda *a, **k: static(*a, **{**k, "reduce_range": False})
    for model, (workload, options, samples, _) in CASES.items():
        x = getattr(data, workload).load().train.x
        np.savez(folder / f"{model}_calib.npz", x=x if samples is None else x[:samples])
        source = ROOT / "models" / f"{model}.onnx"
        int8 = ConvertOptions(**options, quantize="int8", calib=str(folder / f"{model}_calib.npz"))
        for label, opts in (("float", ConvertOptions(**options)), ("int8", int8)):
            (folder / f"{model}.{label}.s2l").write_bytes(serialize_bundle(convert(source, opts))[0])


def evaluate(folder: Path) -> None:
    print(f"  {'model':11s} {'float acc':>9s} {'int8 acc':>9s} {'max output error':>17s}")
    for model, (workload, _, _, epochs) in CASES.items():
        bundles = {label: parse_bundle((folder / f"{model}.{label}.s2l").read_bytes()) for label in ("float", "int8")}
        ft, test = (load_samples(ROOT / "models" / "data" / f"{workload}_{s}.npz", bundles["float"].input) for s in ("ft", "test"))
        scores, outputs = {}, {}
        for label, bundle in bundles.items():
            model_ = Model(bundle)
            model_.fine_tune(ft, TrainConfig(epochs=epochs, seed=0))
            scores[label] = model_.evaluate(test)["accuracy"]
            outputs[label] = OnnxBackend(bundle.segment(SegmentBackend.ONNX), threads=1).run(test.x)
        error = max(np.abs(outputs["int8"][k] - v).max() / np.abs(v).max() for k, v in outputs["float"].items())
        print(f"  {model:11s} {scores['float']:9.4f} {scores['int8']:9.4f} {error:17.4f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emulate", nargs="*", default=[], metavar="CPU", help="qemu-x86_64 -cpu models to run too")
    parser.add_argument("--weights8", action="store_true", help="int8 bundles with 8-bit weights (the scheme before)")
    parser.add_argument("--evaluate", type=Path, help=argparse.SUPPRESS)  # the child run under qemu
    args = parser.parse_args(argv)
    if args.evaluate:
        evaluate(args.evaluate)
        return 0
    qemu = shutil.which("qemu-x86_64")
    if args.emulate and qemu is None:
        parser.error("--emulate needs qemu-x86_64 (Debian: apt-get install qemu-user)")
    with tempfile.TemporaryDirectory(prefix="s2l-int8-cpus-") as tmp:
        build(Path(tmp), args.weights8)
        print(f"int8 bundles with {'8' if args.weights8 else '7'}-bit weights; this CPU:")
        evaluate(Path(tmp))
        for cpu in args.emulate:
            print(f"qemu-x86_64 -cpu {cpu}:", flush=True)
            command = [str(qemu), "-cpu", cpu, sys.executable, __file__, "--evaluate", tmp]
            subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
