"""skip2relu: a nonlinear skip head over standardized taps, trained from the Skip-Cache.

    u_l = (x_l - mean_l) / std_l                      (the fine-tune set's tap statistics)
    z   = F + sum_l B_l relu(A_l u_l + c_l)           A_l: r x d_l, c_l: r, B_l: C x r

A linear skip adds only a linear function of the frozen features and cannot copy what
full fine-tuning does (re-learning the input layer and running it through the frozen
nonlinear network); one ReLU per tap can, and still trains from the cached taps alone.
B starts at zero, so a new head changes nothing; A_l is `lora_a(r, d_l, seed, l)` scaled
by sqrt(3) (unit-variance rows on unit-variance inputs), c_l starts at zero.

Layout as `AdapterHead`: one flat float32 `theta` = [A_0 | ... | A_{L-1} | c | B], B fused
over taps (C x L*r); the A side is one GEMM per tap. The standardization happens once per
`split_taps` call (a chunk of batches), not per batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from s2rt.errors import RuntimeInputError, StateError
from s2rt.head import FLOAT, FlatParameters
from s2rt.heads.branches import Branch, fold_standardization
from s2rt.heads.standardize import Standardizer
from s2rt.lora_init import lora_a

RANK = 32  # measured: r=32 beats r=16 by 0.2-0.8 points on every reference workload (README)


def relu_a_init(rank: int, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    return [lora_a(rank, d, seed, t) * np.float32(np.sqrt(3.0)) for t, d in enumerate(sizes)]


class Skip2ReLUHead(FlatParameters):
    def __init__(self, tap_sizes: Sequence[int], rank: int, num_outputs: int, a_init: Sequence[np.ndarray]) -> None:
        self.tap_sizes = tuple(int(d) for d in tap_sizes)
        if not self.tap_sizes or min(self.tap_sizes) < 1 or rank < 1 or num_outputs < 1:
            raise RuntimeInputError(
                f"skip2relu needs taps of positive size, rank and outputs >= 1; got {self.tap_sizes}, {rank}, {num_outputs}"
            )
        if len(a_init) != len(self.tap_sizes) or any(np.shape(a) != (rank, d) for a, d in zip(a_init, self.tap_sizes)):
            raise RuntimeInputError(f"skip2relu: initial A must be {rank} x d_l per tap for taps {self.tap_sizes}")
        self.rank = rank
        self.num_outputs = num_outputs
        self.tap_width = sum(self.tap_sizes)
        hidden = len(self.tap_sizes) * rank
        self._theta = np.zeros(rank * self.tap_width + hidden + num_outputs * hidden, FLOAT)
        self._grad = np.zeros_like(self._theta)
        self._A, self._c, self._B = self._split(self._theta)
        self._dA, self._dc, self._dB = self._split(self._grad)
        for a, init in zip(self._A, a_init):
            a[...] = init
        bounds = np.cumsum((0, *self.tap_sizes))
        self._x_cols = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self._h_cols = [slice(t * rank, (t + 1) * rank) for t in range(len(self.tap_sizes))]
        self._BT = self._B.T
        self.standardizer = Standardizer(self.tap_width)
        self._us: Sequence[np.ndarray] | None = None
        self._PT = self._HT = np.empty((hidden, 0), FLOAT)

    def _split(self, flat: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        views, start = [], 0
        for d in self.tap_sizes:
            views.append(flat[start : start + self.rank * d].reshape(self.rank, d))
            start += self.rank * d
        hidden = len(self.tap_sizes) * self.rank
        return views, flat[start : start + hidden], flat[start + hidden :].reshape(self.num_outputs, hidden)

    # -- the trainer's hook: statistics of the training split, once -------------------
    def prepare(self, source: object, train_idx: np.ndarray) -> None:
        """Standardize by the training split's tap statistics, unless the head already has
        statistics (loaded from a file or trained before: its A and c were learned on them)."""
        if not self.standardizer.fitted:
            self.standardizer.fit(source, train_idx, self.tap_sizes)

    def split_taps(self, X: np.ndarray) -> list[np.ndarray]:
        """Each tap's columns of X, standardized, as its own contiguous float32 array."""
        return [self.standardizer.apply(X[:, xc], xc) for xc in self._x_cols]

    # forward: P^T = A_l U_l^T + c (per tap), H = relu(P), z = F + H B^T
    def forward_taps(self, us: Sequence[np.ndarray], F: np.ndarray) -> np.ndarray:
        n = F.shape[0]
        if self._PT.shape[1] != n:
            self._PT, self._HT = np.empty((len(self._c), n), FLOAT), np.empty((len(self._c), n), FLOAT)
        PT, HT = self._PT, self._HT
        for a, u, hc in zip(self._A, us, self._h_cols):
            np.dot(a, u.T, out=PT[hc])
        PT += self._c[:, None]
        np.maximum(PT, 0, out=HT)
        z = np.dot(HT.T, self._BT)
        z += F
        self._us = us
        return z

    def forward(self, X: np.ndarray, F: np.ndarray) -> np.ndarray:
        return self.forward_taps(self.split_taps(np.asarray(X, dtype=FLOAT)), F)

    # backward: dB = g^T H, G^T = (B^T g^T) * [P > 0], dc = rowsum G^T, dA_l = G_l^T U_l
    def backward(self, dz: np.ndarray) -> None:
        us = self._us
        if us is None:
            raise RuntimeError("Skip2ReLUHead.backward called before forward")
        np.dot(dz.T, self._HT.T, out=self._dB)
        GT = np.dot(self._BT, dz.T)
        GT *= self._PT > 0
        np.sum(GT, axis=1, out=self._dc)
        for da, u, hc in zip(self._dA, us, self._h_cols):
            np.dot(GT[hc], u, out=da)

    def delta_logits(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=FLOAT)
        HT = np.empty((len(self._c), X.shape[0]), FLOAT)
        for a, u, hc in zip(self._A, self.split_taps(X), self._h_cols):
            np.dot(a, u.T, out=HT[hc])
        HT += self._c[:, None]
        np.maximum(HT, 0, out=HT)
        return np.dot(HT.T, self._BT)

    def export_branches(self) -> list[Branch]:
        """One ReLU branch per tap, the standardization folded into its first layer."""
        s, out = self.standardizer, []
        for t, (a, xc, hc) in enumerate(zip(self._A, self._x_cols, self._h_cols)):
            w, shift = fold_standardization(a, s.mean[xc], s.inv_std[xc])
            weights: list[np.ndarray | None] = [None] * len(self.tap_sizes)
            weights[t] = w.astype(np.float32)
            bias = (shift + self._c[hc]).astype(np.float32)
            out.append(Branch(tuple(weights), bias, True, self._B[:, hc].copy()))
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """`A.l`, `c.l`, `B.l` per tap and the standardization `mean`, `std` (fused tap row)."""
        out: dict[str, np.ndarray] = {}
        for t, (a, hc) in enumerate(zip(self._A, self._h_cols)):
            out[f"A.{t}"], out[f"c.{t}"], out[f"B.{t}"] = a.copy(), self._c[hc].copy(), self._B[:, hc].copy()
        return out | self.standardizer.state()

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        names = {f"{p}.{t}" for t in range(len(self.tap_sizes)) for p in "AcB"} | {"mean", "std"}
        if set(state) != names:
            missing, extra = sorted(names - set(state)), sorted(set(state) - names)
            raise StateError(f"adapter state arrays: missing {missing}, unexpected {extra}")
        for t, d in enumerate(self.tap_sizes):
            for name, shape in ((f"A.{t}", (self.rank, d)), (f"c.{t}", (self.rank,)), (f"B.{t}", (self.num_outputs, self.rank))):
                if np.shape(state[name]) != shape:
                    raise StateError(f"adapter state array {name}: expected shape {shape}, found {np.shape(state[name])}")
                if not np.all(np.isfinite(state[name])):
                    raise StateError(f"adapter state array {name} holds NaN or inf")
        self.standardizer.set(state["mean"], state["std"])
        for t, hc in enumerate(self._h_cols):
            self._A[t][...] = state[f"A.{t}"]
            self._c[hc] = state[f"c.{t}"]
            self._B[:, hc] = state[f"B.{t}"]
