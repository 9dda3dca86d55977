"""Which learning-rate selection rule picks stably? Raw scores for comparing the rules.

    .venv/bin/python bench/lr_rules.py [--workloads ...] [--methods ...] [--seeds 3] [--folds 5] [--long-factor K] [--json FILE]

For every workload, method, seed s and rate of a fixed wide grid: s2lbench's method trains
(seed s) on each of `folds` stratified folds' complements of the fine-tune set (fold split
seeded by s; one fold is the 20 % split `make bench` tunes on) and is scored on the held-out
fold (accuracy, mean cross-entropy); and trains on the whole fine-tune set and is scored on
the shifted test split (what the bench's table reports for that rate). `--long-factor K`:
the same at K times the bench's epochs with a cosine learning rate (the bench's long rows).
`s2lbench.lr_select`
turns these into each rule's picks; `--analyse FILE` prints them. Edge profile (one thread).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _sub in ("runtime", "converter", "bench"):
    sys.path.insert(0, str(ROOT / _sub))

from s2lbench.context import Context  # noqa: E402
from s2lbench.methods import Job, registry  # noqa: E402
from s2lbench.profiles import PROFILES, apply_torch  # noqa: E402
from s2lbench.workloads import load, stratified_folds  # noqa: E402

FT = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
ADAPTER = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
GRIDS = {"torch-ft-all": FT}
DEFAULT_METHODS = ("s2rt-skip2lora", "s2rt-skip2relu", "torch-ft-all", "peft-lora-all")


def study(name: str, methods: list[str], seeds: int, folds: int, long_factor: int = 1) -> dict[str, Any]:
    profile = PROFILES["edge"]
    workload = load(name)
    epochs = (5 if workload.kind == "cnn" else 20) * long_factor
    schedule = "cosine" if long_factor > 1 else "constant"
    context = Context(workload, profile, 4, 8.0, {}, 2 if workload.kind == "cnn" else 1)
    out: dict[str, Any] = {"epochs": epochs, "schedule": schedule, "methods": {}}
    for m in methods:
        method, grid = registry()[m], GRIDS.get(m, ADAPTER)
        per_seed = []
        for seed in range(seeds):
            held = stratified_folds(workload.ft.y, folds, seed)
            fold_scores = []
            for h in held:
                keep = sorted(set(range(len(workload.ft))) - set(h.tolist()))
                train, val = workload.ft.take(keep), workload.ft.take(h)
                row = {}
                for lr in grid:
                    r = method.run(Job(workload, train, val, epochs, 32, lr, seed, profile, schedule), context)
                    row[str(lr)] = {"accuracy": r.accuracy, "loss": r.loss, "calibrated_loss": r.calibrated_loss, "n": len(h)}
                fold_scores.append(row)
            test = {
                str(lr): method.run(Job(workload, workload.ft, workload.test, epochs, 32, lr, seed, profile, schedule), context).accuracy
                for lr in grid
            }
            per_seed.append({"folds": fold_scores, "test": test})
            print(f"{name} {m} seed {seed} done", file=sys.stderr, flush=True)
        out["methods"][m] = {"grid": list(grid), "seeds": per_seed}
    context.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="digits,digits_cnn,har,fan,mnist_cnn")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--long-factor", type=int, default=1, help="K times the bench's epochs, cosine learning rate")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "lr_rules.json"))
    p.add_argument("--analyse", help="print each rule's picks from this JSON instead of measuring")
    args = p.parse_args()
    if args.analyse:
        from s2lbench.lr_select import print_study

        print_study(json.loads(Path(args.analyse).read_text()))
        return 0
    apply_torch(PROFILES["edge"])
    path = Path(args.json)
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for name in args.workloads.split(","):
        data[name] = study(name, args.methods.split(","), args.seeds, args.folds, args.long_factor)
        path.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
