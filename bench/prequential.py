"""Prequential (test-then-train) accuracy on a stream of labelled samples: each incoming
sample is predicted by the current head before it is learned.

    .venv/bin/python bench/prequential.py [--workloads har,digits] [--every 128] [--warmup 64] [--json FILE]

The stream is a workload's fine-tune split in a seeded random order; the frozen taps and
logits of every sample are computed once (what the Skip-Cache holds). Compared on the
same stream:

- oselm online: the frozen model until `--warmup` samples have arrived, then `oselm` is
  fitted on them (kappa and lambda picked on a held-out fifth) and every later sample is
  learned at once by one recursive-least-squares step (`OSELMHead.learn`);
- periodic jobs: every `--every` samples a fresh head (skip2lora r=4, or skip2relu) is
  trained for 20 epochs (Adam, learning rate 0.01) on every sample so far, as a daemon's
  scheduled fine-tuning job would; between jobs the last job's head predicts.

Reported per method: the prequential accuracy over all samples and over the second half,
the curve (cumulative accuracy at every `--every` samples) and the total learning time.
One thread; learning time is process CPU time (a shared machine disturbs it less than wall time).
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

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _sub in ("runtime", "converter", "bench"):
    sys.path.insert(0, str(ROOT / _sub))

from s2conv import ConvertOptions, convert  # noqa: E402
from s2lbench.workloads import load  # noqa: E402
from s2rt.backend import open_backend  # noqa: E402
from s2rt.frozen import FrozenModel  # noqa: E402
from s2rt.methods import get_method  # noqa: E402
from s2rt.trainer import TrainConfig, train  # noqa: E402

JOB = TrainConfig(epochs=20, batch_size=32, learning_rate=0.01, seed=0)


class Rows:
    """A feature source over the stream's precomputed taps and logits."""

    def __init__(self, X: np.ndarray, F: np.ndarray) -> None:
        self.X, self.F = X, F

    def features(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.X[idx], self.F[idx]


def stream(name: str, seed: int) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    w = load(name)
    bundle = convert(w.onnx, ConvertOptions(seed=seed, tap_pool=2 if w.kind == "cnn" else 1))
    order = np.random.default_rng(seed).permutation(len(w.ft))
    frozen = FrozenModel(bundle, open_backend(bundle, "auto", 1))
    x = w.ft.x[order]
    parts = [frozen.run(x[i : i + 256]) for i in range(0, len(x), 256)]
    X, F = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return bundle, X, F, w.ft.y[order]


def oselm_online(bundle: Any, X: np.ndarray, F: np.ndarray, y: np.ndarray, warmup: int) -> tuple[np.ndarray, float]:
    head = get_method("oselm").make_head(bundle)
    correct = np.zeros(len(y), bool)
    seconds = 0.0
    for i in range(len(y)):
        z = F[i : i + 1] if i < warmup else F[i : i + 1] + head.delta_logits(X[i : i + 1])
        correct[i] = z.argmax() == y[i]
        start = time.process_time()
        if i + 1 == warmup:
            idx = np.arange(warmup)
            head.fit(Rows(X, F), y, idx, np.arange(0), JOB)  # type: ignore[attr-defined]
        elif i + 1 > warmup:
            head.learn(X[i : i + 1], F[i : i + 1], y[i : i + 1])  # type: ignore[attr-defined]
        seconds += time.process_time() - start
    return correct, seconds


def periodic_jobs(bundle: Any, method: str, X: np.ndarray, F: np.ndarray, y: np.ndarray, every: int) -> tuple[np.ndarray, float]:
    head = None
    correct = np.zeros(len(y), bool)
    seconds = 0.0
    for i in range(len(y)):
        z = F[i : i + 1] if head is None else F[i : i + 1] + head.delta_logits(X[i : i + 1])
        correct[i] = z.argmax() == y[i]
        if (i + 1) % every == 0:
            start = time.process_time()
            head = get_method(method).make_head(bundle)
            train(head, Rows(X[: i + 1], F[: i + 1]), y[: i + 1], JOB)
            seconds += time.process_time() - start
    return correct, seconds


def run(name: str, every: int, warmup: int, seed: int) -> dict[str, Any]:
    bundle, X, F, y = stream(name, seed)
    runs = {
        "oselm online (RLS per sample)": oselm_online(bundle, X, F, y, warmup),
        f"skip2lora job every {every}": periodic_jobs(bundle, "skip2lora", X, F, y, every),
        f"skip2relu job every {every}": periodic_jobs(bundle, "skip2relu", X, F, y, every),
    }
    half = len(y) // 2
    out: dict[str, Any] = {"workload": name, "n": len(y), "every": every, "warmup": warmup, "frozen": float(np.mean(F.argmax(1) == y))}
    out["methods"] = {
        label: {
            "accuracy": float(correct.mean()),
            "accuracy_second_half": float(correct[half:].mean()),
            "curve": [[k, float(correct[:k].mean())] for k in range(every, len(y) + 1, every)],
            "learn_seconds": seconds,
        }
        for label, (correct, seconds) in runs.items()
    }
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | samples | frozen | method | prequential acc (all / 2nd half) | learning CPU s | cumulative acc at samples seen |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for r in results:
        for label, m in r["methods"].items():
            curve = ", ".join(f"{k}: {a:.3f}" for k, a in m["curve"][:: max(1, len(m["curve"]) // 6)])
            lines.append(
                f"| {r['workload']} | {r['n']} | {r['frozen']:.3f} | {label} | {m['accuracy']:.3f} / {m['accuracy_second_half']:.3f} "
                f"| {m['learn_seconds']:.2f} | {curve} |"
            )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="har,digits,fan,digits_cnn,mnist_cnn")
    p.add_argument("--every", type=int, default=128, help="samples between periodic fine-tuning jobs")
    p.add_argument("--warmup", type=int, default=64, help="samples before oselm's first fit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    results = [run(name, args.every, args.warmup, args.seed) for name in args.workloads.split(",")]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
