"""OS-ELM's one pass against 20 epochs of Skip2-LoRA r=4, on every reference workload.

    .venv/bin/python bench/one_pass.py [--workloads har,digits,fan,digits_cnn,mnist_cnn] [--seeds 3] [--json FILE]

Both fine-tune from the same bundle (rank 4, alpha 8; CNN taps averaged to 2x2, as in
`make bench`) on the whole fine-tune split through `Model.fine_tune` (Skip-Cache on, so
each includes its frozen forward) and are scored on the shifted test split. Skip2-LoRA:
Adam at 0.01 (MLPs) or 0.03 (CNNs), the rates `make bench` picks; oselm: no rate. Time is
the process CPU time of the fine-tuning call (one thread), which a shared machine disturbs
less than wall time; the median over the seeds.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _sub in ("runtime", "converter", "bench"):
    sys.path.insert(0, str(ROOT / _sub))

import numpy as np  # noqa: E402
from s2conv import ConvertOptions, convert  # noqa: E402
from s2lbench.workloads import load  # noqa: E402
from s2rt.data import Samples  # noqa: E402
from s2rt.session import Model  # noqa: E402
from s2rt.trainer import TrainConfig  # noqa: E402

RUNS = {"skip2lora, 20 epochs": ("skip2lora", 20), "oselm, one pass": ("oselm", 1)}


def run(name: str, seeds: int) -> dict[str, Any]:
    w = load(name)
    lr = 0.03 if w.kind == "cnn" else 0.01
    out: dict[str, Any] = {"workload": name, "methods": {}}
    for label, (method, epochs) in RUNS.items():
        accuracy, seconds = [], []
        for seed in range(seeds):
            bundle = convert(w.onnx, ConvertOptions(seed=seed, tap_pool=2 if w.kind == "cnn" else 1))
            model = Model(bundle, threads=1, method=method)
            start = time.process_time()
            model.fine_tune(Samples(w.ft.x, w.ft.y), TrainConfig(epochs=epochs, learning_rate=lr, seed=seed))
            seconds.append(time.process_time() - start)
            accuracy.append(float(np.mean(model.logits(w.test.x).argmax(axis=1) == w.test.y)))
        out["methods"][label] = {"accuracy": statistics.mean(accuracy), "cpu_seconds": statistics.median(seconds)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="har,digits,fan,digits_cnn,mnist_cnn")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    results = [run(name, args.seeds) for name in args.workloads.split(",")]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print("| workload | Skip2-LoRA r=4, 20 epochs: acc / CPU ms | oselm, one pass: acc / CPU ms | time ratio |")
    print("|---|---:|---:|---:|")
    for r in results:
        a, b = r["methods"]["skip2lora, 20 epochs"], r["methods"]["oselm, one pass"]
        print(
            f"| {r['workload']} | {a['accuracy']:.3f} / {a['cpu_seconds'] * 1e3:.0f} | {b['accuracy']:.3f} / {b['cpu_seconds'] * 1e3:.0f} "
            f"| {b['cpu_seconds'] / a['cpu_seconds']:.2f}× |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
