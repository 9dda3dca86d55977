"""Tap standardization: u = (x - mean) / std per feature, with mean and std of the fine-tune
set's cached taps, computed once (one streaming pass, float64) and stored with the adapters.

A feature that does not vary on the fine-tune set (a dead ReLU unit, a padded pixel) gets
std 1, so it contributes exactly 0 there and stays finite elsewhere; a near-constant one is
floored at STD_FLOOR times the tap's typical std, so a tiny quantization wiggle is not
blown up to unit size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from s2rt.errors import StateError

STD_FLOOR = 1e-2
CHUNK_ROWS = 1024


def chunks(source: object, idx: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(indices, X, F) of `idx` in pieces the source serves well (`prefetch_rows`)."""
    step = max(1, int(getattr(source, "prefetch_rows", 0) or CHUNK_ROWS))
    for start in range(0, len(idx), step):
        part = idx[start : start + step]
        X, F = source.features(part)  # type: ignore[attr-defined]
        yield part, X, F


def tap_moments(source: object, idx: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) std per feature of the rows `idx`, merged chunk by chunk
    (Chan et al.'s pairwise update) in float64."""
    n, mean, m2 = 0, np.zeros(width), np.zeros(width)
    for _, X, _ in chunks(source, idx):
        x = X.astype(np.float64)
        k = len(x)
        mu = x.mean(axis=0)
        dev = x - mu
        delta = mu - mean
        total = n + k
        mean += delta * (k / total)
        m2 += np.einsum("ij,ij->j", dev, dev) + delta * delta * (n * k / total)
        n = total
    if n == 0:
        raise ValueError("tap_moments needs at least one sample")
    return mean, np.sqrt(m2 / n)


def safe_std(std: np.ndarray, tap_sizes: Sequence[int]) -> np.ndarray:
    """std with constant features at 1 and near-constant ones floored per tap."""
    out = np.array(std, dtype=np.float64)
    start = 0
    for d in tap_sizes:
        part = out[start : start + d]
        live = part[part > 0]
        floor = STD_FLOOR * float(np.sqrt(np.mean(live * live))) if live.size else 0.0
        part[part <= 0] = 1.0
        np.maximum(part, floor, out=part)
        start += d
    return out


class Standardizer:
    """Holds mean and 1/std (float32) for the fused tap row; `apply` standardizes a block of columns."""

    def __init__(self, width: int) -> None:
        self.mean = np.zeros(width, np.float32)
        self.std = np.ones(width, np.float32)
        self.inv_std = np.ones(width, np.float32)
        self.fitted = False

    def fit(self, source: object, idx: np.ndarray, tap_sizes: Sequence[int]) -> None:
        mean, std = tap_moments(source, idx, len(self.mean))
        self.set(mean, safe_std(std, tap_sizes))

    def set(self, mean: np.ndarray, std: np.ndarray) -> None:
        for name, a in (("mean", mean), ("std", std)):
            if np.shape(a) != self.mean.shape:
                raise StateError(f"adapter state array {name}: expected shape {self.mean.shape}, found {np.shape(a)}")
            if not np.all(np.isfinite(a)):
                raise StateError(f"adapter state array {name} holds NaN or inf")
        if np.any(np.asarray(std) <= 0):
            raise StateError("adapter state array std: every entry must be > 0")
        self.mean[...] = mean
        self.std[...] = std
        self.inv_std[...] = 1.0 / self.std
        self.fitted = True

    def apply(self, X: np.ndarray, cols: slice) -> np.ndarray:
        """(X - mean[cols]) / std[cols] as a new contiguous float32 array."""
        u = np.subtract(X, self.mean[cols], dtype=np.float32)
        u *= self.inv_std[cols]
        return u

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean.copy(), "std": self.std.copy()}
