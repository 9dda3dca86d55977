"""Losses: each returns (mean loss, dL/dz) for logits z (N x C) in one pass."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from s2rt.bundle.model import Loss

if TYPE_CHECKING:
    from s2rt.fused import Layout

LossFn = Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]


def softmax_cross_entropy(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(z) against integer labels y (N,).

    Sized for small batches, where call overhead dominates: labels are picked by flat
    index and row sums are a GEMV with ones (each about half the cost of a 2-D fancy
    index or `sum(axis=1)`): 11 us instead of 14 us at 32 x 7.
    """
    n, c = z.shape
    row_starts, ones = _batch_constants(n, c)
    picks = row_starts + y
    p = z - np.maximum.reduce(z, axis=1, keepdims=True)
    lse = -p.ravel()[picks]
    np.exp(p, out=p)
    total = p @ ones
    lse += np.log(total)
    loss = float(np.add.reduce(lse)) / n
    total *= n
    p /= total[:, None]
    p.ravel()[picks] -= 1.0 / n
    return loss, p


@functools.lru_cache(maxsize=16)
def _batch_constants(n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat index of each row's first logit, and ones for row sums; read-only."""
    row_starts, ones = np.arange(0, n * c, c), np.ones(c, np.float32)
    row_starts.flags.writeable = ones.flags.writeable = False
    return row_starts, ones


def mse(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over all elements of (z - y)^2, as torch's `mse_loss`; y reshapes to z's shape."""
    diff = z - y.reshape(z.shape)
    loss = float(np.vdot(diff, diff)) / diff.size
    diff *= 2.0 / diff.size
    return loss, diff


LOSSES: Mapping[Loss, LossFn] = {
    Loss.SOFTMAX_CROSS_ENTROPY: softmax_cross_entropy,
    Loss.MSE: mse,
}


# -- fused losses: the trainer's fast path (s2rt.fused) ---------------------------------------
# Logits arrive transposed (C x n, without the frozen logits F); `grad` adds F and leaves
# scale * dL/dz^T in place, scale being the optimizer's grad_scale, and keeps what the
# batch's loss needs; the per-batch losses are read once per epoch.


class FusedLoss(Protocol):
    def load(self, y: np.ndarray, first: int) -> None: ...

    def grad(self, b: int, Z: np.ndarray) -> None: ...

    def batch_losses(self) -> np.ndarray: ...

    def batch_loss(self, b: int) -> float: ...

    def unsure(self) -> bool:
        """Whether the epoch just run may have lost precision; then it is run again after `make_exact`."""
        ...

    def make_exact(self) -> None: ...


class FusedSoftmaxCE:
    """`softmax_cross_entropy` on transposed logits. Per sample it keeps the label's shifted
    logit and the sum of exponentials already multiplied by n_b / scale (so one division
    gives scale * softmax / n_b); the label's one-hot (scale / n_b) is subtracted from a
    per-chunk matrix.

    The shift that keeps exp() in range is, by default, each sample's largest frozen logit
    (taken from F^T once per chunk) instead of the largest adapted logit (two calls per
    batch): softmax does not depend on it, and it is as good while the adapters move the
    logits by less than about 60 (e^60 neither overflows nor underflows float32). After
    each epoch `unsure` says whether some sample went past that (a sum of exponentials
    that is not finite or below e^-60); the trainer then runs the epoch again from its
    start with the exact per-batch maximum (`make_exact`), as the unfused loss does, and
    keeps that for the rest of the run. 6 calls per batch, 8 when exact."""

    LOG_SUM_MIN = -60.0

    def __init__(self, layout: Layout, FT: np.ndarray, zs: Sequence[np.ndarray], scale: float) -> None:
        C, R, n = FT.shape[0], layout.chunk_rows, layout.n
        self.layout, self.FT = layout, FT
        self.exact = False
        self.pick = np.zeros(n, np.float32)  # z_y - shift, per sample of the epoch
        self.total = np.ones(n, np.float32)  # sum exp(z - shift) * n_b / scale
        self.onehot = np.zeros((C, R), np.float32)
        self.label_at = np.zeros(R, np.int64)  # flat index of the label's logit in its batch's Z
        sizes = np.array([layout.size(b) for b in range(layout.batches)], np.float64)
        self.starts = np.array([layout.rows(b).start for b in range(layout.batches)], np.int64)
        self.sizes = sizes
        per_sample = np.repeat(sizes, sizes.astype(np.int64))
        self.log_factor = np.log(per_sample / scale).astype(np.float32)
        # per chunk position: each row's offset in its batch and its one-hot value
        self.column = np.concatenate([np.arange(layout.size(b)) for b in range(layout.batches)])
        self.width = per_sample.astype(np.int64)
        self.value = (scale / per_sample).astype(np.float32)
        self.cols = np.arange(R)
        self.shift = np.empty(R, np.float32)
        self._batch = []
        for b, Z in enumerate(zs):
            inner, rows = layout.in_chunk(b), layout.rows(b)
            ones = np.full(C, sizes[b] / scale, np.float32).dot
            mx = np.empty(Z.shape[1], np.float32)
            self._batch.append(
                (FT[:, inner], mx, Z.reshape(-1).take, self.label_at[inner], self.pick[rows], ones, self.total[rows], self.onehot[:, inner])
            )

    def load(self, y: np.ndarray, first: int) -> None:
        n, at = len(y), self.layout.rows(first).start
        np.add(np.multiply(y, self.width[at : at + n]), self.column[at : at + n], out=self.label_at[:n])
        self.onehot[:, :n] = 0.0
        self.onehot[y, self.cols[:n]] = self.value[at : at + n]
        if not self.exact:
            FT = self.FT[:, :n]
            np.maximum.reduce(FT, axis=0, out=self.shift[:n])
            FT -= self.shift[:n]

    def grad(self, b: int, Z: np.ndarray) -> None:
        FT, mx, take, label_at, pick, ones, total, onehot = self._batch[b]  # take, ones: bound methods
        Z += FT
        if self.exact:
            np.maximum.reduce(Z, axis=0, out=mx)
            Z -= mx
        take(label_at, None, pick, "clip")  # the bound method: np.take adds a Python-level wrapper
        np.exp(Z, out=Z)
        ones(Z, total)  # sum over the classes, times n_b / scale
        Z /= total
        Z -= onehot

    def make_exact(self) -> None:
        self.exact = True

    def _log_sums(self) -> np.ndarray:
        log_sum = np.log(self.total)
        log_sum -= self.log_factor
        return log_sum

    def unsure(self) -> bool:
        if self.exact:
            return False
        log_sum = self._log_sums()
        return not (np.isfinite(log_sum).all() and np.isfinite(self.pick).all() and log_sum.min() > self.LOG_SUM_MIN)

    def batch_losses(self) -> np.ndarray:
        lse = self._log_sums()
        lse -= self.pick
        return np.add.reduceat(lse, self.starts, dtype=np.float64) / self.sizes

    def batch_loss(self, b: int) -> float:
        rows = self.layout.rows(b)
        lse = np.log(self.total[rows]) - self.log_factor[rows] - self.pick[rows]
        return float(np.add.reduce(lse, dtype=np.float64)) / len(lse)


class FusedMSE:
    """`mse` on transposed logits: the chunk's targets are subtracted from F^T once, so a
    batch is one add, one dot product and one multiply."""

    def __init__(self, layout: Layout, FT: np.ndarray, zs: Sequence[np.ndarray], scale: float) -> None:
        C = FT.shape[0]
        self.FT, self.layout = FT, layout
        self.sizes = np.array([layout.size(b) * C for b in range(layout.batches)], np.float64)
        self.squares = np.zeros(layout.batches)
        self._batch = [(FT[:, layout.in_chunk(b)], np.float32(2.0 * scale / self.sizes[b])) for b in range(len(zs))]

    def load(self, y: np.ndarray, first: int) -> None:
        self.FT[:, : len(y)] -= y.T

    def grad(self, b: int, Z: np.ndarray) -> None:
        FmY, factor = self._batch[b]
        Z += FmY
        self.squares[b] = np.vdot(Z, Z)
        Z *= factor

    def unsure(self) -> bool:
        return False

    def make_exact(self) -> None:
        pass

    def batch_losses(self) -> np.ndarray:
        return self.squares / self.sizes

    def batch_loss(self, b: int) -> float:
        return float(self.squares[b] / self.sizes[b])


FUSED_LOSSES: Mapping[Loss, Callable[[Layout, np.ndarray, Sequence[np.ndarray], float], FusedLoss]] = {
    Loss.SOFTMAX_CROSS_ENTROPY: FusedSoftmaxCE,
    Loss.MSE: FusedMSE,
}


def make_fused_loss(loss: Loss, layout: Layout, FT: np.ndarray, zs: Sequence[np.ndarray], scale: float) -> FusedLoss:
    """The fused form of `loss` over an epoch `layout`; `zs[b]` is batch b's logits buffer, FT the chunk's F^T."""
    return FUSED_LOSSES[loss](layout, FT, zs, scale)
