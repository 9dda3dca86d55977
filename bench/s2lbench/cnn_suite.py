"""The CNN benchmark (make bench-cnn): the seed papers' peers, their costs, corrupted inputs.

In one edge-profile process (one thread everywhere):
1. per reference CNN (digits_cnn: ResNet-style; mnist_cnn: MobileNet-style), on its
   shifted split: learning rates (suite.tune, grids grown off their edges), timed rounds
   (suite.timed_rounds), and per method the cost of one step (s2lbench.cost) and a
   fresh process's peak RSS (s2lbench.rss);
2. per reference CNN, the corruption workload (s2lbench.corrupted): learning rates tuned
   once on the corruption mix, then per corruption a fine-tune on its ft split and the
   accuracy on its held-out split (all three severities); the frozen model's accuracy per
   corruption and severity;
3. Skip2-LoRA's alpha/r sweep on the corruption workload: r in {1, 2, 4, 8} with alpha/r
   held at the default's 2, and with alpha held at the default's 8.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from s2lbench import lr_grid
from s2lbench.context import Context
from s2lbench.methods import Job, Method
from s2lbench.profiles import Profile
from s2lbench.suite import BenchConfig, log, rss_all, select_methods, summarise, timed_rounds, tune
from s2lbench.workloads import load

CNN_METHODS = ("s2rt-skip2lora", "peft-lora-all", "peft-dora-all", "lora-c-all", "galore-all", "torch-ft-all")


@dataclass(frozen=True)
class CnnConfig:
    workloads: tuple[str, ...] = ("digits_cnn", "mnist_cnn")
    methods: tuple[str, ...] = CNN_METHODS
    epochs: int = 5
    batch_size: int = 32
    repeats: int = 3  # timed runs per method on the reference splits; seeds 0..repeats-1
    grid_size: int | None = 2  # the middle of each method's grid, then grown off its edges
    grid_extend: int = 3
    val_folds: int = 5  # BenchConfig.val_folds: folds whose pooled validation scores pick the rates
    lr_rule: str = lr_grid.DEFAULT_RULE  # BenchConfig.lr_rule
    tap_pool: int = 2
    rank: int = 4
    alpha: float = 8.0
    max_ft: int | None = None  # subsample the reference splits
    max_test: int | None = None
    corruptions: tuple[str, ...] | None = None  # None: every corruption in s2models.data.corrupt
    corrupt_max_ft: int | None = 600  # images per corrupted ft split (each at one severity)
    corrupt_max_test: int | None = 300  # images per corrupted test split (each at all three severities)
    sweep_ranks: tuple[int, ...] = (1, 2, 4, 8)
    rss: bool = True

    def bench(self) -> BenchConfig:
        return BenchConfig(
            workloads=self.workloads,
            methods=self.methods,
            epochs=self.epochs,
            batch_size=self.batch_size,
            repeats=self.repeats,
            grid_size=self.grid_size,
            grid_extend=self.grid_extend,
            val_folds=self.val_folds,
            lr_rule=self.lr_rule,
            rank=self.rank,
            alpha=self.alpha,
            max_ft=self.max_ft,
            max_test=self.max_test,
            rss_methods=None if self.rss else (),
            tap_pool_by_kind={"cnn": self.tap_pool},
        )


QUICK = CnnConfig(
    workloads=("digits_cnn",),
    epochs=1,
    repeats=1,
    grid_size=1,
    grid_extend=0,
    val_folds=1,
    max_ft=64,
    max_test=64,
    corruptions=("gaussian_noise", "snow"),
    corrupt_max_ft=64,
    corrupt_max_test=32,
    sweep_ranks=(1, 4),
    rss=False,
)


def reference(name: str, methods: list[Method], config: CnnConfig, profile: Profile) -> dict[str, Any]:
    from s2lbench.cost import method_cost
    from s2lbench.suite import frozen_accuracy

    bench = config.bench()
    workload = load(name).subset(config.max_ft, config.max_test)
    context = Context(workload, profile, config.rank, config.alpha, {}, config.tap_pool)
    log(f"[cnn] {name}: {len(workload.ft)} fine-tune / {len(workload.test)} test, {config.epochs} epochs")
    failed: dict[str, str] = {}
    tuned = tune(workload, methods, context, bench, profile, failed)
    lrs = {m: t["lr"] for m, t in tuned.items()}
    runs = timed_rounds(workload, methods, lrs, context, bench, profile, failed)
    kept = [m for m in methods if m.name in runs]
    x, y = workload.ft.x[: config.batch_size], workload.ft.y[: config.batch_size]
    costs = {m.name: method_cost(m.name, m.family, context, x, y, lrs[m.name], len(workload.ft), config.epochs) for m in kept}
    rss = rss_all(workload, kept, lrs, context, bench, profile) if config.rss else {}
    return {
        "workload": name,
        "n_ft": len(workload.ft),
        "n_test": len(workload.test),
        "epochs": config.epochs,
        "frozen_accuracy": frozen_accuracy(workload),
        "tuning": tuned,
        "failed": failed,
        "methods": summarise(runs, kept, lrs),
        "costs": costs,
        "rss": rss,
        "frozen_flops_per_sample": costs.get("s2rt-skip2lora", {}).get("flops_frozen_forward"),
    }


def frozen_by_severity(onnx_path: str, test: Any, severity: np.ndarray, profile: Profile) -> dict[str, float]:
    from s2lbench.latency import ort_session

    session = ort_session(onnx_path, profile)
    hit = session.run(None, {session.get_inputs()[0].name: test.x})[0].argmax(axis=1) == test.y
    return {str(s): float(hit[severity == s].mean()) for s in np.unique(severity)} | {"mean": float(hit.mean())}


def corruption(cnn: str, methods: list[Method], config: CnnConfig, profile: Profile) -> dict[str, Any]:
    from s2models.data.corrupt import names

    from s2lbench import corrupted

    started = time.perf_counter()
    chosen = list(config.corruptions or names())
    mix, sets = corrupted.build(cnn, chosen, config.corrupt_max_ft, config.corrupt_max_test)
    log(f"[cnn] {cnn} corrupted: {len(chosen)} corruptions built in {time.perf_counter() - started:.0f} s")
    context = Context(mix, profile, config.rank, config.alpha, {}, config.tap_pool)
    failed: dict[str, str] = {}
    tuned = tune(mix, methods, context, config.bench(), profile, failed)
    table: dict[str, Any] = {}
    for s in sets:
        row: dict[str, Any] = {"family": s.family, "frozen": frozen_by_severity(str(mix.onnx), s.test, s.severity, profile)}
        for m in methods:
            if m.name in tuned:
                job = Job(mix, s.ft, s.test, config.epochs, config.batch_size, tuned[m.name]["lr"], 0, profile)
                row[m.name] = m.run(job, context).accuracy
        table[s.corruption] = row
        log(f"  {s.corruption}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)))
    return {
        "n_ft": len(mix.ft),
        "n_test_per_severity": len(sets[0].test) // 3,
        "tuning": tuned,
        "failed": failed,
        "corruptions": table,
        "sweep": sweep(mix, sets, tuned.get("s2rt-skip2lora", {}).get("lr"), methods, config, profile),
        "seconds": time.perf_counter() - started,
    }


def sweep(mix: Any, sets: list[Any], lr: float | None, methods: list[Method], config: CnnConfig, profile: Profile) -> list[dict[str, Any]]:
    """Skip2-LoRA at each rank, with alpha/r held constant and with alpha held constant."""
    skip2 = next((m for m in methods if m.name == "s2rt-skip2lora"), None)
    if skip2 is None or lr is None:
        return []
    ratio = config.alpha / config.rank
    out = []
    for rank in config.sweep_ranks:
        for hold, alpha in (("alpha/r", ratio * rank), ("alpha", config.alpha)):
            context = Context(mix, profile, rank, alpha, {}, config.tap_pool)
            accs = {
                s.corruption: skip2.run(Job(mix, s.ft, s.test, config.epochs, config.batch_size, lr, 0, profile), context).accuracy
                for s in sets
            }
            out.append({"rank": rank, "alpha": alpha, "held": hold, "mean": float(np.mean(list(accs.values()))), "by_corruption": accs})
        log(f"  sweep r={rank}: " + ", ".join(f"{o['held']} held {o['mean']:.3f}" for o in out[-2:]))
    return out


def run(config: CnnConfig, profile: Profile) -> dict[str, Any]:
    import onnxruntime
    import torch

    from s2lbench.profiles import apply_torch
    from s2lbench.suite import _version

    apply_torch(profile)
    methods = select_methods(config.bench())
    started = time.perf_counter()
    out: dict[str, Any] = {
        "profile": profile.name,
        "config": dataclasses.asdict(config),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {
            "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "peft": _version("peft"),
            "albumentations": _version("albumentations"),
        },
        "labels": {m.name: m.label for m in methods},
        "families": {m.name: m.family for m in methods},
        "reference": {},
        "corruption": {},
    }
    for name in config.workloads:
        out["reference"][name] = reference(name, methods, config, profile)
    for name in config.workloads:
        out["corruption"][name] = corruption(name, methods, config, profile)
    out["seconds"] = time.perf_counter() - started
    return out
