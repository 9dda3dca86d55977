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

Lambda is chosen without a test split: each device sends the sums of its training samples
and, apart, of its held-out ones (`split_statistics`: the content-hash split the daemon's
jobs and accuracy gate use, so the gate still judges the solved version on samples it was
not fitted to). `choose_lambda` fits the training total for each candidate and keeps the
one with the least squared error on the held-out total, computable from G_val, X_val^T T_val
and tr(T_val^T T_val) alone. kappa stays fixed (KAPPA): a squared error against targets of
another scale says nothing about which kappa classifies better.

What the sums reveal: G is the device's samples' second moments. A device with n < D
samples sends a matrix whose range is the span of its taps, and with n = 1 it sends
x x^T and x t^T: the sample's taps up to sign, and its target. Outside a trusted server
these sums need secure aggregation (the server sees only the fleet's total) or added noise.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from s2rt.bundle.model import Loss
from s2rt.data import Samples
from s2rt.heads.sums import KAPPA, RidgeSums, pack, ridge_sums, squared_error, unpack
from s2rt.serve.gate import VAL_FRACTION, held_out
from s2rt.session import Model

from s2fleet.aggregate import Adapters, refactor

__all__ = [
    "KAPPA",
    "LAMBDA",
    "Choice",
    "Statistics",
    "choose_lambda",
    "fit",
    "pack",
    "split_statistics",
    "statistics",
    "to_adapters",
    "unpack",
]

LAMBDA = 1e-3  # when no held-out sums are there to choose it
LAMBDAS = tuple(float(v) for v in np.logspace(-6, 0, 13))  # the candidates `choose_lambda` tries: half decades
CHUNK = 1024  # samples per frozen forward: bounds the device's memory
Statistics: TypeAlias = RidgeSums  # the daemon computes the same sums (POST /v1/fleet/statistics)


def split_statistics(model: Model, samples: Samples, kappa: float = KAPPA) -> tuple[Statistics, Statistics]:
    """The sums of the samples a daemon's jobs train on and of its held-out ones (`s2rt.serve.gate.held_out`)."""
    val = held_out(samples.x, VAL_FRACTION)
    assert samples.y is not None
    return tuple(statistics(model, Samples(samples.x[m], samples.y[m]), kappa) for m in (~val, val))  # type: ignore[return-value]


def statistics(model: Model, samples: Samples, kappa: float = KAPPA) -> Statistics:
    """The device's sums over its samples (float64 sums, float32 on the wire)."""
    if samples.y is None:
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
    gram, cross = total(parts, width)
    return solve(gram, cross, lam)


def total(parts: Sequence[Statistics], width: int) -> tuple[np.ndarray, np.ndarray]:
    """G and X^T T of all devices together (float64)."""
    if not parts:
        raise ValueError("no ridge statistics to solve")
    gram = np.zeros((width, width))
    cross = np.zeros((width, parts[0].cross.shape[1]))
    for p in parts:
        if p.cross.shape != cross.shape:
            raise ValueError(f"ridge statistics: expected X^T T of shape {cross.shape}, got {p.cross.shape}")
        gram += unpack(p.gram.astype(np.float64), width)
        cross += p.cross
    return gram, cross


def solve(gram: np.ndarray, cross: np.ndarray, lam: float) -> np.ndarray:
    if not 0 < lam < np.inf:
        raise ValueError(f"ridge lambda: expected a number > 0, got {lam}")
    regularized = gram.copy()
    regularized[np.diag_indices(len(gram))] += lam * max(float(np.mean(np.diag(gram))), 1e-12)
    return np.asarray(np.linalg.solve(regularized, cross).T)


@dataclass(frozen=True)
class Choice:
    """The lambda a ridge round uses, how it was chosen, and the held-out squared error per candidate."""

    lam: float
    how: str
    errors: dict[float, float]

    def report(self) -> dict[str, Any]:
        return {"lambda": self.lam, "lambda_chosen_by": self.how, "held_out_error": {f"{k:g}": v for k, v in self.errors.items()}}


def choose_lambda(train: Sequence[Statistics], held: Sequence[Statistics], width: int, grid: Sequence[float] = LAMBDAS) -> Choice:
    """The lambda whose fit to the training sums has the least squared error on the held-out sums
    (`s2rt.heads.sums.squared_error`: no held-out sample is needed, only the devices' sums);
    LAMBDA when no device holds a held-out sample."""
    held = [h for h in held if h.examples]
    if not held:
        return Choice(LAMBDA, "default (no held-out samples)", {})
    gram, cross = total(train, width)
    val_gram, val_cross = total(held, width)
    val_targets = sum(h.targets for h in held)
    errors = {float(lam): squared_error(solve(gram, cross, lam), val_gram, val_cross, val_targets) for lam in grid}
    return Choice(min(errors, key=errors.__getitem__), "held-out squared error", errors)


def fit_chosen(train: Sequence[Statistics], held: Sequence[Statistics], width: int, lam: float | None = None) -> tuple[np.ndarray, Choice]:
    """The server's ridge round: dW fitted to the training sums, at `lam` or (None) the lambda the held-out sums choose."""
    choice = choose_lambda(train, held, width) if lam is None else Choice(lam, "fixed", {})
    return fit(train, width, choice.lam), choice


def to_adapters(dw: np.ndarray, tap_sizes: Sequence[int], rank: int, scaling: float) -> Adapters:
    """Per-tap (A_l, B_l) of `rank` with s B_l A_l the best rank-`rank` part of dW_l (all of it when rank >= C)."""
    bounds = np.cumsum((0, *tap_sizes))
    return [refactor(dw[:, a:b] / scaling, rank) for a, b in zip(bounds[:-1], bounds[1:])]
