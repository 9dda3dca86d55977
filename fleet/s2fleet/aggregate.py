"""Server-side aggregation of Skip2-LoRA adapters from many devices.

A device's adapters are, per tap l, A_l (r x d_l) and B_l (C x r); what they change is
dW_l = B_l A_l (the scaling s = alpha / r is common to all and left out). Each device's
update is weighted by its example count n_k (w_k = n_k / sum n).

    fedavg  A = sum w_k A_k, B = sum w_k B_k. Cheap, but B A of the averages is not the
            average of the B_k A_k: devices that moved their A apart partly cancel.
    exact   dW = sum w_k B_k A_k, the true weighted average, re-factored into rank r by
            an SVD. rank(dW_l) <= min(C, d_l), so with r >= C (s2conv --rank) the
            factorisation is exact; below it the SVD keeps the best rank-r part.
    damped  exact, with a server step size eta: dW <- dW_global + eta (avg - dW_global).
            eta = 1 is `exact`; eta < 1 keeps part of the last global version, which
            steadies the rounds when devices see very different data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

MAX_STEP = 5.0
Adapters = list[tuple[np.ndarray, np.ndarray]]  # per tap (A_l, B_l), as `AdapterHead.per_tap()`


class Aggregation(str, Enum):
    FEDAVG = "fedavg"
    EXACT = "exact"
    DAMPED = "damped"


@dataclass(frozen=True)
class Update:
    adapters: Adapters
    examples: int


def weights(updates: Sequence[Update]) -> np.ndarray:
    counts = np.array([u.examples for u in updates], np.float64)
    if len(counts) == 0 or counts.min() < 0 or counts.sum() <= 0:
        raise ValueError(f"aggregation needs updates with positive example counts, got {counts.tolist()}")
    return counts / counts.sum()


def fedavg(updates: Sequence[Update]) -> Adapters:
    w = weights(updates)
    taps = len(updates[0].adapters)
    out = []
    for t in range(taps):
        a = sum(wk * u.adapters[t][0].astype(np.float64) for wk, u in zip(w, updates))
        b = sum(wk * u.adapters[t][1].astype(np.float64) for wk, u in zip(w, updates))
        out.append((np.asarray(a, np.float32), np.asarray(b, np.float32)))
    return out


def delta(adapters: Adapters) -> list[np.ndarray]:
    """dW_l = B_l A_l per tap (C x d_l), in float64."""
    return [b.astype(np.float64) @ a.astype(np.float64) for a, b in adapters]


def refactor(dw: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) of `rank` with B A the best rank-`rank` approximation of dw (C x d), balanced:
    both factors carry sqrt of the singular values, so neither dwarfs the other in training."""
    u, s, vt = np.linalg.svd(dw, full_matrices=False)
    k = min(rank, len(s))
    root = np.sqrt(s[:k])
    a = np.zeros((rank, dw.shape[1]))
    b = np.zeros((dw.shape[0], rank))
    a[:k] = root[:, None] * vt[:k]
    b[:, :k] = u[:, :k] * root[None, :]
    return a.astype(np.float32), b.astype(np.float32)


def target(updates: Sequence[Update], current: Adapters | None = None, step: float = 1.0) -> list[np.ndarray]:
    """The dW per tap that exact aggregation aims at: the weighted average, or a step of size
    `step` from `current` towards it."""
    if not 0 < step <= MAX_STEP:
        raise ValueError(f"server step size: expected 0 < step <= {MAX_STEP}, got {step}")
    w = weights(updates)
    per_device = [delta(u.adapters) for u in updates]
    average = [sum(wk * d[t] for wk, d in zip(w, per_device)) for t in range(len(per_device[0]))]
    if current is not None and step != 1:
        average = [g + step * (avg - g) for g, avg in zip(delta(current), average)]
    return average


def exact(updates: Sequence[Update], rank: int, current: Adapters | None = None, step: float = 1.0) -> Adapters:
    """`target` re-factored to `rank`."""
    return [refactor(dw, rank) for dw in target(updates, current, step)]


def aggregate(
    method: Aggregation, updates: Sequence[Update], rank: int, current: Adapters | None = None, step: float = 1.0
) -> Adapters:
    if not updates:
        raise ValueError("no updates to aggregate")
    if method == Aggregation.FEDAVG:
        return fedavg(updates)
    return exact(updates, rank, current, step if method == Aggregation.DAMPED else 1.0)


def truncation_error(updates: Sequence[Update], result: Adapters, current: Adapters | None = None, step: float = 1.0) -> float:
    """Relative Frobenius distance between the dW aimed at (`target`) and what `result` carries."""
    wanted, got = target(updates, current, step), delta(result)
    num = sum(float(np.sum((w - g) ** 2)) for w, g in zip(wanted, got))
    den = sum(float(np.sum(w**2)) for w in wanted)
    return float(np.sqrt(num / den)) if den > 0 else 0.0
