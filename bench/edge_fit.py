"""Edge fit: bundle size and fine-tuned accuracy of float vs int8 segments and per cache dtype.

    .venv/bin/python bench/edge_fit.py [--models har digits] [--seeds 0 1 2] [--epochs 20]
    .venv/bin/python bench/edge_fit.py --sizes-only

First, the bundle bytes of every reference model as float and int8, ONNX and TFLite, and
the int8/float ratio (calibration data: the model's pretraining inputs). Then, for each
of `--models`: fine-tune on the shifted device split with the bundle's defaults (Adam,
lr 0.01, batch 32) for every seed and report the shifted-test accuracy (mean over seeds)
per segment and per Skip-Cache storage: float32, float16, int8 with calibrated scales and
int8 with scales chosen on the device.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for folder in ("runtime", "converter", "models"):
    sys.path.insert(0, str(ROOT / folder))

from s2conv import ConvertOptions, convert  # noqa: E402
from s2conv.quantize import SEGMENT_SCHEMES  # noqa: E402
from s2models import data  # noqa: E402
from s2rt.bundle import Bundle, parse_bundle, serialize_bundle  # noqa: E402
from s2rt.data import load_samples  # noqa: E402
from s2rt.session import Model  # noqa: E402
from s2rt.trainer import TrainConfig  # noqa: E402

SEGMENTS = {"onnx float": {}, "onnx int8": {"quantize": "int8"}, "tflite float": {"backend": "tflite"},
            "tflite int8": {"backend": "tflite", "quantize": "int8"}}
REFERENCE = {"har_mlp": "har", "digits_mlp": "digits", "fan_mlp": "fan", "digits_cnn": "digits", "mnist_cnn": "mnist"}
CACHES = {"float32": {}, "float16": {"cache_dtype": "float16"}, "int8 calibrated": {"cache_dtype": "int8"},
          "int8 on device": {"cache_dtype": "int8", "device_scales": True}}


def bundle_for(source: Path, calib: Path, segment: dict, cache: dict) -> Bundle:
    options = {**segment, **{k: v for k, v in cache.items() if k != "device_scales"}}
    needs_calib = options.get("quantize") == "int8" or (options.get("cache_dtype") == "int8" and not cache.get("device_scales"))
    return convert(source, ConvertOptions(**options, calib=str(calib) if needs_calib else None))


def accuracy(bundle: Bundle, name: str, seeds: list[int], epochs: int) -> float:
    backend = bundle.segments[0].backend.name.lower()
    scores = []
    for seed in seeds:
        model = Model(parse_bundle(serialize_bundle(bundle)[0]), backend=backend)
        ft, test = (load_samples(ROOT / "models" / "data" / f"{name}_{s}.npz", bundle.input) for s in ("ft", "test"))
        model.fine_tune(ft, TrainConfig(epochs=epochs, seed=seed))
        scores.append(model.evaluate(test)["accuracy"])
    return float(np.mean(scores))


def size(bundle: Bundle) -> int:
    return len(serialize_bundle(bundle)[0])


def print_sizes(tmp: Path) -> None:
    print("bundle bytes, float vs int8 segment (default options; calibration: pretraining inputs)")
    print(f"  int8 schemes: ONNX {SEGMENT_SCHEMES['onnx']}, TFLite {SEGMENT_SCHEMES['tflite']} (s2conv inspect explains them)")
    print(f"  {'model':11s} {'ONNX float':>10s} {'ONNX int8':>10s} {'ratio':>6s} {'TFLite float':>12s} {'TFLite int8':>11s} {'ratio':>6s}")
    for model, workload in REFERENCE.items():
        calib = tmp / f"{model}_calib.npz"
        np.savez(calib, x=getattr(data, workload).load().train.x[:1000])
        cells = []
        source = ROOT / "models" / f"{model}.onnx"
        for backend in ("onnx", "tflite"):
            sizes = [size(bundle_for(source, calib, {"backend": backend, **q}, {})) for q in ({}, {"quantize": "int8"})]
            cells.append(f"{sizes[0]:10,d} {sizes[1]:10,d} {sizes[1] / sizes[0]:5.3f}x")
        print(f"  {model:11s} {cells[0]}   {cells[1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["har", "digits"], choices=["har", "digits"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--sizes-only", action="store_true", help="print the bundle sizes and stop")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="s2l-edge-fit-") as tmp:
        print_sizes(Path(tmp))
        if args.sizes_only:
            return 0
        for name in args.models:
            calib = Path(tmp) / f"{name}_calib.npz"
            np.savez(calib, x=getattr(data, name).load().train.x)
            source = ROOT / "models" / f"{name}_mlp.onnx"
            print(f"\n{name}: shifted-test accuracy after {args.epochs} epochs, mean of seeds {args.seeds}")
            print(f"  {'segment':14s} {'bundle bytes':>12s}  " + "  ".join(f"{c:>15s}" for c in CACHES))
            for label, segment in SEGMENTS.items():
                bytes_ = size(bundle_for(source, calib, segment, {}))
                scores = [accuracy(bundle_for(source, calib, segment, cache), name, args.seeds, args.epochs) for cache in CACHES.values()]
                print(f"  {label:14s} {bytes_:12,d}  " + "  ".join(f"{s:15.4f}" for s in scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
