"""Shifted-test accuracy of every s2rt fine-tuning method on every reference model.

    .venv/bin/python bench/methods_table.py [--models har,digits,digits_cnn,mnist_cnn] [--epochs 20] [--seed 0] [--json FILE]

For each reference model in models/models.json (the HAR and digits MLPs, the digits CNN
and the MNIST MobileNet-style CNN by default): convert it with the default options
(rank 4, alpha 8; CNN feature-map taps globally averaged, and for the CNNs a second
bundle with `--tap-pool 2`), evaluate the frozen model on the shifted test split, then
for each method (`s2rt train --method ...`) fine-tune a fresh head on the ft split for
`--epochs` epochs with the bundle's defaults (Adam, learning rate 0.01, batch 32) and the
same seed, and evaluate again. Also reported: the cache record per sample (the bytes a
Skip-Cache record takes: key, label, frozen logits and the taps), each method's trainable
parameters against the model's own (its float initialisers), and the fine-tuning time
(one thread; on a shared machine only the ratios mean anything).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _sub in ("runtime", "converter"):
    sys.path.insert(0, str(ROOT / _sub))

from s2conv import ConvertOptions, convert  # noqa: E402
from s2conv.candidates import model_parameters  # noqa: E402
from s2conv.load import load_model  # noqa: E402
from s2rt.bundle import parse_bundle, serialize_bundle  # noqa: E402
from s2rt.data import load_samples  # noqa: E402
from s2rt.methods import METHODS  # noqa: E402
from s2rt.session import Model  # noqa: E402
from s2rt.trainer import TrainConfig  # noqa: E402

MODELS = ROOT / "models"
DEFAULT_MODELS = ("har", "digits", "digits_cnn", "mnist_cnn")


def run_model(name: str, entry: dict[str, Any], tap_pool: int, epochs: int, seed: int) -> dict[str, Any]:
    path = MODELS / entry["onnx"]
    bundle = parse_bundle(serialize_bundle(convert(path, ConvertOptions(tap_pool=tap_pool, seed=seed)))[0])
    ft = load_samples(MODELS / entry["data"]["ft"], bundle.input, bundle.head.num_outputs, require_labels=True)
    test = load_samples(MODELS / entry["data"]["test"], bundle.input, bundle.head.num_outputs, require_labels=True)
    before = Model(bundle).evaluate(test)["accuracy"]
    row: dict[str, Any] = {
        "model": name,
        "onnx": entry["onnx"],
        "tap_pool": tap_pool if any(len(t.shape) > 1 or t.reduction for t in bundle.taps) else None,
        "taps": len(bundle.taps),
        "tap_width": bundle.tap_width,
        "cache_record_bytes": bundle.cache.record_size,
        "model_parameters": model_parameters(load_model(path)),
        "n_ft": len(ft.x),
        "n_test": len(test.x),
        "before": before,
        "methods": {},
    }
    for method in METHODS:
        model = Model(bundle, method=method)
        start = time.perf_counter()
        result = model.fine_tune(ft, TrainConfig(epochs=epochs, seed=seed))
        seconds = time.perf_counter() - start
        row["methods"][method] = {
            "after": model.evaluate(test)["accuracy"],
            "parameters": model.head.num_parameters,
            "seconds": seconds,
            "cache_hits": result.cache_hits,
            "cache_misses": result.cache_misses,
        }
    return row


def render(rows: list[dict[str, Any]], epochs: int, seed: int) -> str:
    methods = list(METHODS)
    head = ["model", "taps (pool)", "cache B/sample", "model params", "before", *methods]
    lines = [
        f"Shifted-test accuracy after {epochs} epochs (seed {seed}), trainable parameters in brackets",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        pool = "" if r["tap_pool"] is None else (" global avg" if r["tap_pool"] == 1 else f" {r['tap_pool']}x{r['tap_pool']}")
        cells = [
            r["model"],
            f"{r['taps']}, D={r['tap_width']}{pool}",
            f"{r['cache_record_bytes']:,}",
            f"{r['model_parameters']:,}",
            f"{r['before']:.3f}",
            *(f"{r['methods'][m]['after']:.3f} ({r['methods'][m]['parameters']:,})" for m in methods),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Fine-tuning seconds (one thread, including the first frozen forward over the ft split):", ""]
    lines.append("| model | " + " | ".join(methods) + " |")
    lines.append("|" + "---|" * (len(methods) + 1))
    for r in rows:
        pool = "" if r["tap_pool"] is None else f", pool {r['tap_pool']}"
        lines.append(f"| {r['model']}{pool} | " + " | ".join(f"{r['methods'][m]['seconds']:.3f}" for m in methods) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated models.json entries")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    index = json.loads((MODELS / "models.json").read_text())
    rows = []
    for name in args.models.split(","):
        if name not in index:
            parser.error(f"no model {name!r} in models/models.json; known: {', '.join(sorted(index))}")
        pools = (1, 2) if len(index[name]["input"]["shape"]) > 2 else (1,)
        rows += [run_model(name, index[name], pool, args.epochs, args.seed) for pool in pools]
    print(render(rows, args.epochs, args.seed))
    if args.json:
        args.json.write_text(json.dumps({"epochs": args.epochs, "seed": args.seed, "rows": rows}, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
