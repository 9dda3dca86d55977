"""One profile's benchmark, in one process: tune, timed rounds, latency, cached-epoch floor, RSS.

Per workload:
1. learning rates: every method trains (seed 0) on the complement of each of `val_folds`
   stratified folds of the fine-tune set for each rate of its grid, and is scored on the
   held-out folds pooled (every sample validated once); the rate with the lowest pooled
   validation cross-entropy at each model's best temperature is kept (`lr_rule`, the same
   rule for every method; why this rule and five folds: README, "Picking learning rates",
   measured by bench/lr_rules.py). While the best rate is at an edge of the
   rates tried, the grid grows by one of its own steps on that side (`lr_grid`, at most
   `grid_extend` times), so no method is held back by where its grid stopped; the rule, the
   rates tried with their scores, and whether the best still sits on an edge go into the
   JSON. Closed-form methods (oselm) have no rate.
   Or the rates come from another profile's results, so both profiles train alike;
2. timed rounds: `repeats` rounds, round k uses seed k (data order, adapter init) and runs
   every method once, in an order rotated by k; every run trains on the whole fine-tune
   set and is scored on the shifted test set;
3. s2rt inference latency against plain onnxruntime, and a cached epoch against its GEMM floor;
4. peak RSS of one run per method, each in its own process;
5. optionally (`long_factor`), FT-All and the nonlinear head again at long_factor times the
   epochs with a cosine learning rate, so that neither side wins on step count alone; their
   peak rates are tuned again, by the same rule, at that budget and schedule.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2lbench import lr_grid, lr_select
from s2lbench.context import Context
from s2lbench.methods import NO_LR, Job, Method, RunResult, registry
from s2lbench.profiles import Profile, apply_torch
from s2lbench.timing import mean_std, median, rotate
from s2lbench.workloads import Workload, load, stratified_folds, stratified_split

# A CNN prediction costs ~100x an MLP's: fewer latency calls keep the figure's cost alike.
CNN_LATENCY_SCALE = 0.1
# Peak RSS is measured for one method of each kind of process (each costs a fresh process).
RSS_METHODS = ("s2rt-skip2lora", "s2rt-skip2lora-nocache", "torch-ft-all", "peft-lora-all-matched")
LONG_METHODS = ("torch-ft-all", "s2rt-skip2relu")
# Left out unless named in --methods: 1-3 s a run (its 1,265-wide ridge), it alone would stretch `make bench` by minutes.
OPT_IN = ("s2rt-oselm-rf",)


@dataclass(frozen=True)
class BenchConfig:
    workloads: tuple[str, ...] = ("har", "digits", "fan")
    methods: tuple[str, ...] | None = None  # None: every available method
    epochs: int = 20
    batch_size: int = 32
    repeats: int = 5  # timed runs per method; seeds 0..repeats-1
    val_folds: int = 5  # stratified folds of the fine-tune set whose pooled scores pick learning rates; 1: one split
    val_fraction: float = 0.2  # the held-out part when val_folds is 1
    lr_rule: str = lr_grid.DEFAULT_RULE  # lr_select.RULES: how a rate is picked from its validation scores
    grid_size: int | None = None  # use only the middle of each grid (quick slice)
    grid_extend: int = 4  # steps the grid may grow while its best rate sits on an edge (lr_grid)
    rank: int = 4
    alpha: float = 8.0
    max_ft: int | None = None  # subsample the splits (quick slice)
    max_test: int | None = None
    latency_calls: int = 2000
    latency_batch_calls: int = 400
    floor_epochs: int = 10
    rss_methods: tuple[str, ...] | None = RSS_METHODS  # None: all; (): no RSS
    epochs_by_kind: dict[str, int] = field(default_factory=dict)  # e.g. {"cnn": 5}
    grid_by_kind: dict[str, int] = field(default_factory=dict)  # grid_size per workload kind
    tap_pool_by_kind: dict[str, int] = field(default_factory=dict)  # s2conv --tap-pool (conv taps averaged to g x g)
    long_factor: int = 0  # > 0: LONG_METHODS again at long_factor x the epochs, cosine learning rate

    def epochs_for(self, workload: Workload) -> int:
        return self.epochs_by_kind.get(workload.kind, self.epochs)

    def grid_for(self, workload: Workload) -> int | None:
        return self.grid_by_kind.get(workload.kind, self.grid_size)


QUICK = BenchConfig(
    workloads=("har",),
    epochs=3,
    repeats=2,
    grid_size=1,
    max_ft=256,
    max_test=256,
    latency_calls=200,
    latency_batch_calls=100,
    floor_epochs=2,
    rss_methods=("s2rt-skip2lora",),
    grid_extend=0,  # one rate per method keeps the slice under a minute
    val_folds=1,
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def grid(method: Method, size: int | None) -> tuple[float, ...]:
    if size is None or size >= len(method.lr_grid):
        return method.lr_grid
    start = (len(method.lr_grid) - size) // 2
    return method.lr_grid[start : start + size]


def validation_sets(y: Any, config: BenchConfig) -> list[tuple[Any, Any]]:
    """(train, held-out) index pairs that score a rate: k stratified folds, or one split when val_folds is 1."""
    if config.val_folds == 1:
        return [stratified_split(y, config.val_fraction, seed=0)]
    import numpy as np

    folds = stratified_folds(y, config.val_folds, seed=0)
    return [(np.setdiff1d(np.arange(len(y)), held), held) for held in folds]


def tune(
    workload: Workload,
    methods: list[Method],
    context: Context,
    config: BenchConfig,
    profile: Profile,
    failed: dict[str, str],
    epochs: int | None = None,
    schedule: str = "constant",
) -> dict[str, Any]:
    """Each method's learning rate; a method whose math another one shares (`tune_as`) takes its rate."""
    sets = [(workload.ft.take(keep), workload.ft.take(held)) for keep, held in validation_sets(workload.ft.y, config)]
    epochs = epochs or config.epochs_for(workload)
    out: dict[str, Any] = {}
    for method in sorted(methods, key=lambda m: m.tune_as is not None):
        if method.tune_as in out:
            out[method.name] = {"lr": out[method.tune_as]["lr"], "shared_with": method.tune_as}
            continue
        if not method.lr_grid:
            out[method.name] = {"lr": NO_LR, "closed_form": True, "grid": []}
            continue

        def evaluate(lr: float, method: Method = method) -> dict[str, float]:
            scored = []
            for train, val in sets:
                result = method.run(Job(workload, train, val, epochs, config.batch_size, lr, 0, profile, schedule), context)
                scored.append(
                    {"val_accuracy": result.accuracy, "val_loss": result.loss, "val_calibrated_loss": result.calibrated_loss, "n": len(val)}
                )
            return lr_select.pooled(scored)

        try:
            scores = lr_grid.search(evaluate, grid(method, config.grid_for(workload)), config.grid_extend, config.lr_rule)
        except Exception as e:  # one method failing on one workload must not sink the benchmark
            failed[method.name] = f"{type(e).__name__}: {e}"
            log(f"  {method.name} failed on {workload.name}: {failed[method.name]}")
            continue
        out[method.name] = lr_grid.record(scores, config.lr_rule) | {"val_folds": config.val_folds, "epochs": epochs, "schedule": schedule}
        best = out[method.name]["lr"]
        log(f"  tune {method.name}: lr {best:g} (val {_brief(scores[best])})")
    return out


def _brief(score: dict[str, float]) -> str:
    return ", ".join(f"{k.removeprefix('val_').replace('_', ' ')} {v:.3f}" for k, v in score.items() if k != "n")


def timed_rounds(
    workload: Workload,
    methods: list[Method],
    lrs: dict[str, float],
    context: Context,
    config: BenchConfig,
    profile: Profile,
    failed: dict[str, str],
) -> dict[str, list[dict[str, Any]]]:
    epochs = config.epochs_for(workload)
    by_name = {m.name: m for m in methods if m.name in lrs and m.name not in failed}
    for name, method in list(by_name.items()):  # warm-up: first-call costs (allocators, lazy imports) stay out of the figures
        try:
            method.run(Job(workload, workload.ft, workload.test, 1, config.batch_size, lrs[name], 0, profile), context)
        except Exception as e:
            failed[name] = f"{type(e).__name__}: {e}"
            log(f"  {name} failed on {workload.name}: {failed[name]}")
            del by_name[name]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in by_name}
    for round_ in range(config.repeats):
        for name in rotate(list(by_name), round_):
            job = Job(workload, workload.ft, workload.test, epochs, config.batch_size, lrs[name], round_, profile)
            result: RunResult = by_name[name].run(job, context)
            runs[name].append(dataclasses.asdict(result) | {"seed": round_})
        log(f"  round {round_ + 1}/{config.repeats} done")
    return runs


def long_rounds(
    workload: Workload,
    methods: list[Method],
    context: Context,
    config: BenchConfig,
    profile: Profile,
    failed: dict[str, str],
    known: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """LONG_METHODS at long_factor x the epochs, cosine learning rate, seeds 0..repeats-1; peak rate tuned at that
    budget (or taken from `known`, another profile's long rows)."""
    epochs = config.epochs_for(workload) * config.long_factor
    chosen = [m for m in methods if m.name in LONG_METHODS and m.name not in failed]
    if known is not None:
        tuned = {name: row["tuning"] for name, row in known.items()}
    else:
        tuned = tune(workload, chosen, context, config, profile, failed, epochs, "cosine")
    out: dict[str, Any] = {}
    for method in chosen:
        if method.name not in tuned:
            continue
        lr = tuned[method.name]["lr"]
        runs = [
            method.run(Job(workload, workload.ft, workload.test, epochs, config.batch_size, lr, seed, profile, "cosine"), context)
            for seed in range(config.repeats)
        ]
        acc_mean, acc_std = mean_std([r.accuracy for r in runs])
        out[method.name] = {
            "label": method.label,
            "epochs": epochs,
            "schedule": "cosine",
            "lr": lr,
            "tuning": tuned[method.name],
            "accuracy_mean": acc_mean,
            "accuracy_std": acc_std,
            "accuracy_all": [r.accuracy for r in runs],
            "seconds_median": median([r.seconds for r in runs]),
        }
        log(f"  long {method.name}: {epochs} epochs cosine, lr {lr:g}, acc {acc_mean:.3f}")
    return out


def summarise(runs: dict[str, list[dict[str, Any]]], methods: list[Method], lrs: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in methods:
        rs = runs.get(method.name)
        if not rs:
            continue
        acc_mean, acc_std = mean_std([r["accuracy"] for r in rs])
        entry = {
            "label": method.label,
            "family": method.family,
            "lr": lrs[method.name],
            "closed_form": not method.lr_grid,
            "trainable": rs[0]["trainable"],
            "accuracy_mean": acc_mean,
            "accuracy_std": acc_std,
            "seconds_median": median([r["seconds"] for r in rs]),
            "seconds_all": [r["seconds"] for r in rs],
            "runs": len(rs),
            "note": rs[0]["note"],
        }
        if rs[0]["phases"]:
            entry["phases_median"] = {k: median([r["phases"][k] for r in rs]) for k in rs[0]["phases"]}
        if rs[0]["hit_rate"] is not None:
            entry["hit_rate"] = median([r["hit_rate"] for r in rs])
        out[method.name] = entry
    for reference in ("peft-lora-all-matched", "peft-lora-all", "torch-ft-all"):
        if reference in out:
            for entry in out.values():
                entry[f"speedup_vs_{reference}"] = out[reference]["seconds_median"] / entry["seconds_median"]
    return out


def frozen_accuracy(workload: Workload) -> float:
    from s2lbench.latency import ort_session

    session = ort_session(str(workload.onnx), Profile("edge", 1))
    logits = session.run(None, {session.get_inputs()[0].name: workload.test.x})[0]
    return float((logits.argmax(axis=1) == workload.test.y).mean())


def rss_all(
    workload: Workload, methods: list[Method], lrs: dict[str, float], context: Context, config: BenchConfig, profile: Profile
) -> dict[str, Any]:
    from s2rt.bundle.writer import write_bundle

    from s2lbench.rss import measure

    wanted = [m for m in methods if (config.rss_methods is None or m.name in config.rss_methods) and m.family != "ortt"]
    if not wanted:
        return {}
    with tempfile.TemporaryDirectory(prefix="s2lbench-rss-") as tmp:
        bundle_path = str(Path(tmp) / "bundle.s2l")
        write_bundle(context.bundle(0), bundle_path)
        needs_rank = any(m.name == "peft-lora-all-matched" for m in wanted)
        rank = context.matched_lora_rank() if needs_rank else 0
        out = {}
        for method in wanted:
            job = Job(workload, workload.ft, workload.test, config.epochs_for(workload), config.batch_size, lrs[method.name], 0, profile)
            out[method.name] = measure(method.name, job, profile, bundle_path, rank, config.max_ft, config.max_test)
            log(f"  rss {method.name}: {out[method.name]}")
    return out


def run_workload(
    name: str, methods: list[Method], config: BenchConfig, profile: Profile, known: dict[str, Any] | None, peer_env: dict[str, str]
) -> dict[str, Any]:
    """One workload's figures; `known` is another profile's result for it, whose learning rates to reuse."""
    from s2lbench.floor import cached_epoch
    from s2lbench.latency import predict_latency

    workload = load(name).subset(config.max_ft, config.max_test)
    methods = [m for m in methods if m.kinds is None or workload.kind in m.kinds]
    tap_pool = config.tap_pool_by_kind.get(workload.kind, 1)
    context = Context(workload, profile, config.rank, config.alpha, peer_env, tap_pool)
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def lap(phase: str) -> None:
        phases[phase] = time.perf_counter() - started - sum(phases.values())

    scale = CNN_LATENCY_SCALE if workload.kind == "cnn" else 1.0
    try:
        sizes = f"{len(workload.ft)} fine-tune / {len(workload.test)} test samples"
        log(f"[{profile.name}] {name}: {sizes}, {config.epochs_for(workload)} epochs")
        failed: dict[str, str] = {}
        known_lrs = None if known is None else known["tuning"]
        if known_lrs is not None:
            tuned = known_lrs
            failed.update({m.name: "failed in the first profile" for m in methods if m.name not in known_lrs})
        else:
            tuned = tune(workload, methods, context, config, profile, failed)
        lap("tune")
        lrs = {m.name: tuned[m.name]["lr"] for m in methods if m.name in tuned}
        runs = timed_rounds(workload, methods, lrs, context, config, profile, failed)
        methods = [m for m in methods if m.name in runs]
        lap("timed_rounds")
        known_long = None if known is None else known.get("long")
        long = long_rounds(workload, methods, context, config, profile, failed, known_long) if config.long_factor else {}
        lap("long_rounds")
        calls, batch_calls = max(50, int(config.latency_calls * scale)), max(50, int(config.latency_batch_calls * scale))
        latency = predict_latency(context.bundle(0), str(workload.onnx), workload.test.x, profile, calls, batch_calls)
        lap("latency")
        skip2_lr = lrs.get("s2rt-skip2lora", 0.01)
        floor = cached_epoch(context.bundle(0), workload.ft.x, workload.ft.y, profile, config.batch_size, skip2_lr, config.floor_epochs)
        lap("cached_epoch")
        rss = rss_all(workload, methods, lrs, context, config, profile) if profile.name == "edge" else {}
        lap("rss")
    finally:
        context.close()
    return {
        "workload": name,
        "kind": workload.kind,
        "n_ft": len(workload.ft),
        "n_test": len(workload.test),
        "epochs": config.epochs_for(workload),
        "tap_pool": tap_pool,
        "frozen_accuracy": frozen_accuracy(workload),
        "matched_lora_rank": context.matched_lora_rank() if "peft-lora-all-matched" in lrs else None,
        "tuning": {m.name: tuned[m.name] for m in methods},
        "failed": failed,
        "methods": summarise(runs, methods, lrs),
        "runs": runs,
        "long": long,
        "latency": latency,
        "cached_epoch": floor,
        "rss": rss,
        "seconds": time.perf_counter() - started,
        "phase_seconds": phases,
    }


def select_methods(config: BenchConfig) -> list[Method]:
    available = registry()
    if config.methods is None:
        return [m for name, m in available.items() if name not in OPT_IN]
    unknown = [m for m in config.methods if m not in available]
    if unknown:
        raise KeyError(f"unknown or unavailable methods {unknown}; available: {', '.join(available)}")
    return [available[m] for m in config.methods]


def run_profile(config: BenchConfig, profile: Profile, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole benchmark for one profile; `known` is another profile's result whose learning rates to reuse."""
    import numpy as np
    import onnxruntime
    import torch

    apply_torch(profile)
    methods = select_methods(config)
    started = time.perf_counter()
    workloads = {}
    for name in config.workloads:
        workloads[name] = run_workload(name, methods, config, profile, (known or {}).get("workloads", {}).get(name), profile.child_env())
    return {
        "profile": profile.name,
        "threads": profile.threads,
        "config": dataclasses.asdict(config),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": _cpus()},
        "versions": {"numpy": np.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "peft": _version("peft")},
        "methods": [m.name for m in methods],
        "workloads": workloads,
        "seconds": time.perf_counter() - started,
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")
