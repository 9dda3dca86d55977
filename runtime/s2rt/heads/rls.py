"""Recursive least squares for ridge regression, in float64.

Keeps P = (Phi^T Phi + lam I)^-1 and beta = P Phi^T T for the rows seen so far; a chunk
of k new rows (Phi_k, T_k) updates both by the matrix inversion lemma:

    S = I_k + Phi_k P Phi_k^T,   K = P Phi_k^T S^-1,
    beta += K (T_k - Phi_k beta),   P -= K Phi_k P

so after any sequence of chunks (one sample each, or many) beta is the batch ridge
solution over every row so far: the online sequential update of OS-ELM. A fresh state is
P = I / lam, beta = 0; `from_gram` starts from a batch solution instead.
"""

from __future__ import annotations

import numpy as np

SYMMETRIZE_EVERY = 64  # rows between re-symmetrizations of P


class RecursiveRidge:
    def __init__(self, dim: int, outputs: int, lam: float) -> None:
        if not lam > 0:
            raise ValueError(f"ridge lambda must be > 0, got {lam}")
        self.lam = float(lam)
        self.P = np.eye(dim) / self.lam
        self.beta = np.zeros((dim, outputs))
        self.rows = 0
        self._since_symmetric = 0

    @classmethod
    def from_gram(cls, gram: np.ndarray, cross: np.ndarray, lam: float, rows: int) -> RecursiveRidge:
        """The state after `rows` rows whose Phi^T Phi is `gram` and Phi^T T is `cross`."""
        out = cls(gram.shape[0], cross.shape[1], lam)
        inverse = np.linalg.inv(gram + lam * np.eye(gram.shape[0]))
        out.P = 0.5 * (inverse + inverse.T)
        out.beta = out.P @ cross
        out.rows = rows
        return out

    def state(self) -> dict[str, np.ndarray]:
        """P, beta and the row counters as arrays: enough to continue bit for bit (`from_state`)."""
        return {"P": self.P.copy(), "beta": self.beta.copy(), "counters": np.array([self.rows, self._since_symmetric], np.int64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], lam: float) -> RecursiveRidge:
        P, beta, counters = (np.asarray(state[k]) for k in ("P", "beta", "counters"))
        dim = P.shape[0] if P.ndim == 2 else -1
        if P.shape != (dim, dim) or beta.ndim != 2 or beta.shape[0] != dim or counters.shape != (2,):
            raise ValueError(f"RLS state: P {P.shape}, beta {beta.shape}, counters {counters.shape} do not fit together")
        if not (np.all(np.isfinite(P)) and np.all(np.isfinite(beta))):
            raise ValueError("RLS state holds NaN or inf")
        out = cls(dim, beta.shape[1], lam)
        out.P, out.beta = P.astype(np.float64), beta.astype(np.float64)
        out.rows, out._since_symmetric = int(counters[0]), int(counters[1])
        return out

    def update(self, phi: np.ndarray, target: np.ndarray) -> None:
        """Learn rows `phi` (k x dim) with targets (k x outputs)."""
        phi = np.atleast_2d(np.asarray(phi, dtype=np.float64))
        target = np.atleast_2d(np.asarray(target, dtype=np.float64))
        phi_p = phi @ self.P  # k x dim
        s = phi_p @ phi.T
        s[np.diag_indices_from(s)] += 1.0
        gain = (phi_p / s[0, 0]).T if len(phi) == 1 else np.linalg.solve(s, phi_p).T  # dim x k: P Phi^T S^-1
        self.beta += gain @ (target - phi @ self.beta)
        self.P -= gain @ phi_p
        self.rows += len(phi)
        self._since_symmetric += len(phi)
        if self._since_symmetric >= SYMMETRIZE_EVERY:  # rounding drift makes P slowly asymmetric
            self.P += self.P.T
            self.P *= 0.5
            self._since_symmetric = 0


def ridge_solve(gram: np.ndarray, cross: np.ndarray, lam: float) -> np.ndarray:
    """The batch ridge solution (Phi^T Phi + lam I)^-1 Phi^T T."""
    return np.linalg.solve(gram + lam * np.eye(gram.shape[0]), cross)
