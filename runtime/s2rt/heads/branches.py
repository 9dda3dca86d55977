"""A head as graph layers, for `s2conv export`: the tuned logits are

    z = F + sum_b  out_b @ act_b( sum_l flatten(x_l) @ W_{b,l}^T + bias_b )

over branches b, with the standardization folded into W and bias (raw taps in, no extra
ops). A linear head is one branch without activation and without `out`; skip2relu is one
ReLU branch per tap; OS-ELM with random features adds a ReLU branch over all taps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Branch:
    weights: tuple[np.ndarray | None, ...]  # per tap: (k x d_l) float32, None when the branch does not read the tap
    bias: np.ndarray | None  # (k,) or None
    relu: bool
    out: np.ndarray | None  # (C x k), None when the branch's k outputs are already logits

    @property
    def width(self) -> int:
        return next(int(w.shape[0]) for w in self.weights if w is not None)

    def apply(self, xs: list[np.ndarray]) -> np.ndarray:
        """The branch's contribution to the logits in NumPy (float64): the export's reference."""
        h = np.zeros((len(xs[0]), self.width))
        for x, w in zip(xs, self.weights):
            if w is not None:
                h += x.astype(np.float64) @ w.astype(np.float64).T
        if self.bias is not None:
            h = h + self.bias
        if self.relu:
            h = np.maximum(h, 0.0)
        return h if self.out is None else h @ self.out.astype(np.float64).T


def fold_standardization(weight: np.ndarray, mean: np.ndarray, inv_std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W' and b' with x W'^T + b' = ((x - mean) * inv_std) W^T, in float64."""
    w = weight.astype(np.float64) * inv_std.astype(np.float64)
    return w, -(w @ mean.astype(np.float64))
