"""Learning-rate selection rules: which rate of a grid to keep, from its validation scores.

One rule for every method (s2rt heads and peers alike). `Scores` maps a rate to its
validation "val_accuracy", "val_loss" (mean cross-entropy; NaN when training diverged) and
"val_calibrated_loss" (the cross-entropy at its best temperature, `methods.calibrated_cross_entropy`).
`bench/lr_rules.py` measures how stably each rule picks across seeds (`print_study`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

Scores = dict[float, dict[str, float]]
Rule = Callable[[Scores], float]


def _loss(s: dict[str, float], key: str = "val_loss") -> float:
    value = s.get(key, math.nan)
    return math.inf if math.isnan(value) else value


def by_accuracy(scores: Scores) -> float:
    """Highest validation accuracy; ties: lower loss."""
    return max(scores, key=lambda lr: (scores[lr]["val_accuracy"], -_loss(scores[lr])))


def by_loss(scores: Scores) -> float:
    """Lowest validation cross-entropy; ties: higher accuracy."""
    return min(scores, key=lambda lr: (_loss(scores[lr]), -scores[lr]["val_accuracy"]))


def by_calibrated_loss(scores: Scores) -> float:
    """Lowest validation cross-entropy at the best temperature; ties: higher accuracy."""
    return min(scores, key=lambda lr: (_loss(scores[lr], "val_calibrated_loss"), -scores[lr]["val_accuracy"]))


def by_smoothed_accuracy(scores: Scores) -> float:
    """Highest mean accuracy over the rate and its neighbours in the grid; ties: lower loss."""
    rates = sorted(scores)

    def smoothed(i: int) -> float:
        return statistics.fmean(scores[r]["val_accuracy"] for r in rates[max(i - 1, 0) : i + 2])

    return rates[max(range(len(rates)), key=lambda i: (smoothed(i), -_loss(scores[rates[i]])))]


RULES: dict[str, Rule] = {
    "loss": by_loss,
    "calibrated-loss": by_calibrated_loss,
    "accuracy": by_accuracy,
    "smoothed-accuracy": by_smoothed_accuracy,
}


def rule(name: str) -> Rule:
    if name not in RULES:
        raise ValueError(f"lr rule: expected one of {', '.join(RULES)}, got {name!r}")
    return RULES[name]


def pooled(folds: list[dict[str, float]]) -> dict[str, float]:
    """Validation scores over several held-out folds, weighted by their sizes ("n")."""
    n = sum(f["n"] for f in folds)
    keys = [k for k in ("val_accuracy", "val_loss", "val_calibrated_loss") if all(k in f for f in folds)]
    return {key: sum(f[key] * f["n"] for f in folds) / n for key in keys} | {"n": n}


# --- the study (bench/lr_rules.py): picks per seed, for each rule and validation size ---


def _scores(folds: list[dict[str, dict[str, float]]]) -> Scores:
    rates = folds[0].keys()
    return {float(lr): pooled([{"val_" + k: v for k, v in f[lr].items() if k != "n"} | {"n": f[lr]["n"]} for f in folds]) for lr in rates}


def study_picks(method: dict[str, Any], rule_name: str, folds: int | None) -> dict[str, Any]:
    """Each seed's pick with `folds` of its folds pooled (None: all; 1: the bench's single 20 % split), and its cost.

    regret: the best rate's test accuracy (mean over seeds) minus the picked rate's (mean over seeds).
    """
    grid = method["grid"]
    picks = [rule(rule_name)(_scores(s["folds"][:folds])) for s in method["seeds"]]
    test = {lr: statistics.fmean(s["test"][str(lr)] for s in method["seeds"]) for lr in grid}
    steps = [grid.index(p) for p in picks]
    return {
        "picks": picks,
        "agree": len(set(picks)) == 1,
        "spread": max(steps) - min(steps),
        "regret": statistics.fmean(max(test.values()) - test[p] for p in picks),
        "oracle": max(test, key=lambda lr: test[lr]),
    }


def print_study(data: dict[str, Any], variants: tuple[tuple[str, int | None], ...] | None = None) -> None:
    variants = variants or tuple((r, f) for f in (1, 2, None) for r in RULES)
    summary: dict[tuple[str, int | None], list[dict[str, Any]]] = {v: [] for v in variants}
    by_method: dict[tuple[str, int | None], dict[str, list[float]]] = {v: {} for v in variants}
    for workload, entry in data.items():
        for name, method in entry["methods"].items():
            cells = []
            for v in variants:
                p = study_picks(method, *v)
                summary[v].append(p)
                by_method[v].setdefault(name, []).append(p["regret"])
                cells.append(f"{'/'.join(f'{x:g}' for x in p['picks'])} ({p['regret'] * 100:+.1f})")
            print(f"{workload:10s} {name:16s} oracle {study_picks(method, 'loss', None)['oracle']:g}: " + "  ".join(cells))
    names = list(next(iter(by_method.values())))
    print("\nrule, folds pooled: all seeds agree / mean spread (grid steps) / mean regret / worst regret (points) / mean regret per method")
    print("  " + " " * 24 + " " * 31 + "  ".join(names))
    for (r, f), ps in summary.items():
        agree = sum(p["agree"] for p in ps)
        per_method = "  ".join(f"{statistics.fmean(by_method[(r, f)][n]) * 100:{len(n)}.2f}" for n in names)
        print(
            f"  {r:18s} {f or 'all'!s:4s} {agree:2d}/{len(ps)}  {statistics.fmean(p['spread'] for p in ps):.2f}"
            f"  {statistics.fmean(p['regret'] for p in ps) * 100:5.2f}  {max(p['regret'] for p in ps) * 100:5.2f}      {per_method}"
        )
