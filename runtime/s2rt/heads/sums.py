"""Ridge sums of the fused taps: what a device sends for the fleet's closed-form round.

With rank >= C the Skip2-LoRA head is any linear map dW (C x D) of the fused taps
x = [x_1 .. x_L]; its ridge fit to what the frozen logits F miss,

    T = kappa (onehot - 1/C) - F   (y - F for a regression head),
    dW = argmin ||X dW^T - T||^2 + lam ||dW||^2,

needs only G = X^T X and X^T T, sums over samples that add up across devices. tr(T^T T)
beside them makes a fit's squared error on those samples computable from the sums
(`squared_error`), which is how held-out sums choose lambda without any sample.
The daemon (`s2rt.serve.fleet_statistics`) and the fleet (`s2fleet.ridge`) share this.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

KAPPA = 4.0
MAX_WIDTH = 1024  # D above this is refused: the D x D float64 sum alone would pass 8 MB


@dataclass(frozen=True)
class RidgeSums:
    """One set of samples' sums: G's upper triangle (row by row, diagonal included), X^T T, tr(T^T T), n."""

    gram: np.ndarray  # (D (D + 1) / 2,) float32
    cross: np.ndarray  # (D, C) float32
    targets: float  # tr(T^T T)
    examples: int


def targets(frozen: np.ndarray, y: np.ndarray, kappa: float, regression: bool) -> np.ndarray:
    """T: what the frozen logits miss (float64)."""
    f = np.asarray(frozen, np.float64)
    if regression:
        return np.asarray(y, np.float64).reshape(f.shape) - f
    c = f.shape[1]
    return kappa * (np.eye(c)[np.asarray(y, np.int64)] - 1.0 / c) - f


def ridge_sums(
    chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], width: int, outputs: int, kappa: float, regression: bool
) -> RidgeSums:
    """The sums over (taps X, frozen logits F, labels y) chunks, in float64 (float32 out)."""
    gram, cross = np.zeros((width, width)), np.zeros((width, outputs))
    total, n = 0.0, 0
    for taps, frozen, y in chunks:
        x = np.asarray(taps, np.float64)
        t = targets(frozen, y, kappa, regression)
        gram += x.T @ x
        cross += x.T @ t
        total += float(np.sum(t * t))
        n += len(x)
    return RidgeSums(pack(gram).astype(np.float32), cross.astype(np.float32), total, n)


def check_width(width: int) -> None:
    if width > MAX_WIDTH:
        raise ValueError(
            f"ridge sums: the bundle's fused taps have D = {width} features; the D x D sums are limited to D <= {MAX_WIDTH} "
            "(choose fewer or smaller taps at conversion, s2conv --taps)"
        )


def pack(gram: np.ndarray) -> np.ndarray:
    return gram[np.triu_indices(len(gram))]


def unpack(packed: np.ndarray, width: int) -> np.ndarray:
    if packed.shape != (width * (width + 1) // 2,):
        raise ValueError(f"ridge statistics: expected {width * (width + 1) // 2} Gram entries for {width} features, got {packed.shape}")
    gram = np.zeros((width, width))
    gram[np.triu_indices(width)] = packed
    return gram + np.triu(gram, 1).T


def squared_error(dw: np.ndarray, gram: np.ndarray, cross: np.ndarray, total: float) -> float:
    """||X dW^T - T||^2 of the samples whose sums are G, X^T T, tr(T^T T)."""
    return float(np.sum((dw @ gram) * dw) - 2.0 * np.sum(dw * cross.T) + total)
