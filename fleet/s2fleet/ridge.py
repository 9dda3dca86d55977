"""The fleet's closed-form round: the Skip2-LoRA head solved by ridge regression from sums.

With rank >= C (s2conv --rank) the head z = F + s sum_l B_l A_l x_l is any linear map
dW (C x D) of the fused taps x = [x_1 .. x_L]. Fitting dW to what the frozen logits miss,

    T = kappa (onehot - 1/C) - F,    dW = argmin ||X dW^T - T||^2 + lam ||dW||^2

(T = y - F for a regression bundle), needs only G = X^T X (D x D) and X^T T (D x C), and
both are sums over samples. Each device sends its own sums (`statistics`), the server adds
them and solves once (`fit`): the result is exactly the ridge fit of all devices' samples
in one place, whatever the split, in one round. It is re-factored per tap into A_l, B_l
(`to_adapters`), so devices receive ordinary Skip2-LoRA adapters and can go on training
them (`--start ridge` in `s2fleet.simulate`). lam is relative: lam * mean(diag G).

What the sums reveal: G is the device's samples' second moments. A device with n < D
samples sends a matrix whose range is the span of its taps, and with n = 1 it sends
x x^T and x t^T: the sample's taps up to sign, and its target. Outside a trusted server
these sums need secure aggregation (the server sees only the fleet's total) or added noise.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeAlias

import numpy as np
from s2rt.bundle.model import Loss
from s2rt.data import Samples
from s2rt.heads.sums import KAPPA, RidgeSums, pack, ridge_sums, unpack
from s2rt.session import Model

from s2fleet.aggregate import Adapters, refactor

__all__ = ["KAPPA", "LAMBDA", "Statistics", "fit", "pack", "statistics", "to_adapters", "unpack"]

LAMBDA = 1e-3
CHUNK = 1024  # samples per frozen forward: bounds the device's memory
Statistics: TypeAlias = RidgeSums  # the daemon computes the same sums (POST /v1/fleet/statistics)


def statistics(model: Model, samples: Samples, kappa: float = KAPPA) -> Statistics:
    """The device's sums over its samples (float64 sums, float32 on the wire)."""
    if samples.y is None or not len(samples.x):
        raise ValueError("ridge statistics need labelled samples")
    y = samples.y

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for start in range(0, len(samples.x), CHUNK):
            taps, frozen = model.frozen.run(samples.x[start : start + CHUNK])
            yield taps, frozen, y[start : start + CHUNK]

    head = model.bundle.head
    width = sum(t.size for t in model.bundle.taps)
    return ridge_sums(chunks(), width, head.num_outputs, kappa, regression=head.loss == Loss.MSE)


def fit(parts: Sequence[Statistics], width: int, lam: float = LAMBDA) -> np.ndarray:
    """The ridge dW (C x width) from all devices' sums."""
    if not parts:
        raise ValueError("no ridge statistics to solve")
    if not 0 < lam < np.inf:
        raise ValueError(f"ridge lambda: expected a number > 0, got {lam}")
    gram = np.zeros((width, width))
    cross = np.zeros((width, parts[0].cross.shape[1]))
    for p in parts:
        if p.cross.shape != cross.shape:
            raise ValueError(f"ridge statistics: expected X^T T of shape {cross.shape}, got {p.cross.shape}")
        gram += unpack(p.gram.astype(np.float64), width)
        cross += p.cross
    gram[np.diag_indices(width)] += lam * max(float(np.mean(np.diag(gram))), 1e-12)
    return np.asarray(np.linalg.solve(gram, cross).T)


def to_adapters(dw: np.ndarray, tap_sizes: Sequence[int], rank: int, scaling: float) -> Adapters:
    """Per-tap (A_l, B_l) of `rank` with s B_l A_l the best rank-`rank` part of dW_l (all of it when rank >= C)."""
    bounds = np.cumsum((0, *tap_sizes))
    return [refactor(dw[:, a:b] / scaling, rank) for a, b in zip(bounds[:-1], bounds[1:])]
