"""Small statistics for timings and accuracies."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def percentiles_us(seconds: Sequence[float]) -> dict[str, float]:
    """p50 and p99 in microseconds."""
    arr = np.asarray(seconds) * 1e6
    return {"p50_us": float(np.percentile(arr, 50)), "p99_us": float(np.percentile(arr, 99)), "n": len(arr)}


def rotate(items: Sequence[str], k: int) -> list[str]:
    """`items` started at position k: each round runs the methods in a shifted order."""
    if not items:
        return []
    k %= len(items)
    return list(items[k:]) + list(items[:k])
