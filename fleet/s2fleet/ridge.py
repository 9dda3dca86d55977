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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from s2rt.bundle.model import Loss
from s2rt.data import Samples
from s2rt.session import Model

from s2fleet.aggregate import Adapters, refactor

KAPPA = 4.0
LAMBDA = 1e-3
CHUNK = 1024  # samples per frozen forward: bounds the device's memory


@dataclass(frozen=True)
class Statistics:
    """One device's sums: G's upper triangle (row by row, diagonal included), X^T T, and n."""

    gram: np.ndarray  # (D (D + 1) / 2,)
    cross: np.ndarray  # (D, C)
    examples: int


def statistics(model: Model, samples: Samples, kappa: float = KAPPA) -> Statistics:
    """The device's sums over its samples (float64 sums, float32 on the wire)."""
    if samples.y is None or not len(samples.x):
        raise ValueError("ridge statistics need labelled samples")
    regression = model.bundle.head.loss == Loss.MSE
    gram = cross = None
    for start in range(0, len(samples.x), CHUNK):
        taps, frozen = model.frozen.run(samples.x[start : start + CHUNK])
        x = np.asarray(taps, np.float64)
        y = np.asarray(samples.y[start : start + CHUNK])
        t = y.reshape(frozen.shape) - frozen if regression else kappa * (np.eye(frozen.shape[1])[y] - 1.0 / frozen.shape[1]) - frozen
        gram = x.T @ x if gram is None else gram + x.T @ x
        cross = x.T @ t if cross is None else cross + x.T @ t
    assert gram is not None and cross is not None
    return Statistics(pack(gram).astype(np.float32), cross.astype(np.float32), len(samples.x))


def pack(gram: np.ndarray) -> np.ndarray:
    return gram[np.triu_indices(len(gram))]


def unpack(packed: np.ndarray, width: int) -> np.ndarray:
    if packed.shape != (width * (width + 1) // 2,):
        raise ValueError(f"ridge statistics: expected {width * (width + 1) // 2} Gram entries for {width} features, got {packed.shape}")
    gram = np.zeros((width, width))
    gram[np.triu_indices(width)] = packed
    return gram + np.triu(gram, 1).T


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
