"""The Skip2-LoRA adapter head in NumPy: z = F + s * sum_l B_l A_l x_l, s = alpha / r.

Layout: every trainable number lives in one flat float32 vector `theta` =
[A_0 | A_1 | ... | A_{L-1} | B], each A_l (r x d_l) row-major, B = [B_0 ... B_{L-1}]
(C x L*r). Optimizers then update one array instead of 2L: Adam costs 7.5 us per step
instead of 14.8 us (two arrays) at D=240, 15.8 us instead of 26 us at D=2000.

Fusion (measured, one thread, N=32, r=4, forward + backward without the update):
the B side is fused over taps (one GEMM each for z, dB and dH), the A side runs one
GEMM per tap. A block-diagonal A (one GEMM for H and one for dA) ties at D=240, L=3
(16.7 vs 17.7 us) but loses 4x at D=2000, L=6 (176 vs 42 us): it multiplies L*r x D
zeros and then has to mask the gradient.

At these sizes a GEMM costs about as much as its call, so every product is an `np.dot`
into a preallocated C-contiguous output (0.8 us against 2.4 us for `np.matmul(out=)` at
32 x 48 x 4), H is kept transposed (H^T: L*r x N, so each tap's rows are contiguous) and
the trainer hands in each tap as its own contiguous array (`split_taps`): forward +
backward 10 us instead of 16 us at D=240 (CPU time, one thread).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from s2rt.errors import RuntimeInputError, StateError
from s2rt.fused import LoRAForm

FLOAT = np.float32


class FlatParameters:
    """A head whose trainable numbers are one flat float32 vector `_theta` (its gradient
    `_grad`), with named views into it: what the optimizers and the state files see."""

    _theta: np.ndarray
    _grad: np.ndarray

    @property
    def num_parameters(self) -> int:
        return self._theta.size

    def parameters(self) -> dict[str, np.ndarray]:
        """The trainable weights as one flat array; update it in place."""
        return {"theta": self._theta}

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """d loss / d theta from the last `backward`, same keys as `parameters()`."""
        return {"theta": self._grad}


class AdapterHead(FlatParameters):
    """The fused Skip2-LoRA head; `forward` keeps X and H for the next `backward`.

    X (N x D) is the fused tap row [x_1 ... x_L], F (N x C) the frozen logits, both float32.
    `forward` keeps a reference to X: do not modify it before `backward`.
    """

    def __init__(
        self,
        tap_sizes: Sequence[int],
        rank: int,
        alpha: float,
        num_outputs: int,
        a_init: Sequence[np.ndarray],
    ) -> None:
        self.tap_sizes = tuple(int(d) for d in tap_sizes)
        _check_spec(self.tap_sizes, rank, num_outputs, a_init)
        self.rank = rank
        self.alpha = float(alpha)
        self.num_outputs = num_outputs
        self.scaling = self.alpha / rank
        self.tap_width = sum(self.tap_sizes)
        hidden = len(self.tap_sizes) * rank

        self._theta = np.zeros(rank * self.tap_width + num_outputs * hidden, FLOAT)
        self._grad = np.zeros_like(self._theta)
        self._A, self._B = self._split(self._theta)
        self._dA, self._dB = self._split(self._grad)
        bounds = np.cumsum((0, *self.tap_sizes))
        self._x_cols = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self._h_cols = [slice(t * rank, (t + 1) * rank) for t in range(len(self.tap_sizes))]
        for a, init in zip(self._A, a_init):
            a[...] = init

        self._BT = self._B.T  # a view: follows theta
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # batch size -> (H^T, G^T), L*r x N
        self._xs: Sequence[np.ndarray] | None = None

    def _split(self, flat: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Views of `flat` as the per-tap A_l and the fused B."""
        views, start = [], 0
        for d in self.tap_sizes:
            views.append(flat[start : start + self.rank * d].reshape(self.rank, d))
            start += self.rank * d
        return views, flat[start:].reshape(self.num_outputs, -1)


    def fused_form(self) -> LoRAForm:
        """This head for the trainer's fused steps (s2rt.fused), with views into theta."""
        return LoRAForm(tuple(self._x_cols), self.rank, self.scaling, self._split)

    def split_taps(self, X: np.ndarray) -> list[np.ndarray]:
        """Each tap's columns of the fused rows X (N x D) as its own contiguous float32 array."""
        return [np.ascontiguousarray(X[:, xc], dtype=FLOAT) for xc in self._x_cols]

    def _buffers_for(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        buffers = self._buffers.get(n)
        if buffers is None:
            if len(self._buffers) >= 4:  # a training run sees one or two batch sizes
                self._buffers.clear()
            hidden = len(self.tap_sizes) * self.rank
            buffers = self._buffers[n] = (np.empty((hidden, n), FLOAT), np.empty((hidden, n), FLOAT))
        return buffers

    # forward: H_l^T = s A_l X_l^T (per tap, rows of H^T), z = F + H B^T (fused)
    def forward_taps(self, xs: Sequence[np.ndarray], F: np.ndarray) -> np.ndarray:
        """Forward on per-tap arrays (N x d_l each, float32, as `split_taps` gives); keeps them for `backward`."""
        HT, _ = self._buffers_for(F.shape[0])
        dot = np.dot
        for a, x, hc in zip(self._A, xs, self._h_cols):
            dot(a, x.T, out=HT[hc])
        HT *= self.scaling
        z = dot(HT.T, self._BT)
        z += F
        self._xs = xs
        return z

    def forward(self, X: np.ndarray, F: np.ndarray) -> np.ndarray:
        """Forward on fused tap rows X (N x D); keeps a reference to X for `backward`."""
        X = np.asarray(X, dtype=FLOAT)
        return self.forward_taps([X[:, xc] for xc in self._x_cols], F)

    # backward (H^T already holds s A_l X_l^T): dB = g^T H, G^T = s B^T g^T, dA_l = G_l^T X_l (per tap)
    def backward(self, dz: np.ndarray) -> None:
        xs = self._xs
        if xs is None:
            raise RuntimeError("AdapterHead.backward called before forward")
        HT, GT = self._buffers_for(dz.shape[0])
        dot = np.dot
        dot(dz.T, HT.T, out=self._dB)
        dot(self._BT, dz.T, out=GT)
        GT *= self.scaling
        for da, x, hc in zip(self._dA, xs, self._h_cols):
            dot(GT[hc], x, out=da)

    def delta_logits(self, X: np.ndarray) -> np.ndarray:
        """The head's contribution s * sum_l B_l A_l x_l; keeps no state."""
        X = np.asarray(X, dtype=FLOAT)
        HT = np.empty((len(self.tap_sizes) * self.rank, X.shape[0]), FLOAT)
        for a, xc, hc in zip(self._A, self._x_cols, self._h_cols):
            np.dot(a, X[:, xc].T, out=HT[hc])
        HT *= self.scaling
        return np.dot(HT.T, self._BT)

    def merged_weight(self) -> np.ndarray:
        """M (D x C) with X M = delta_logits(X): the adapters folded into one matrix for inference,
        rows of tap l = s A_l^T B_l^T. A copy: it does not follow later changes of theta."""
        M = np.empty((self.tap_width, self.num_outputs), FLOAT)
        for a, xc, hc in zip(self._A, self._x_cols, self._h_cols):
            np.dot(a.T, self._BT[hc], out=M[xc])
        M *= self.scaling
        return M

    def per_tap(self, grad: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
        """Copies of (A_l, B_l) per tap: the weights, or with `grad` their gradients."""
        a_views, b = (self._dA, self._dB) if grad else (self._A, self._B)
        return [(a.copy(), b[:, hc].copy()) for a, hc in zip(a_views, self._h_cols)]

    def load_per_tap(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        if len(pairs) != len(self.tap_sizes):
            raise StateError(f"adapter state has {len(pairs)} taps, the head has {len(self.tap_sizes)}")
        for t, (a, b) in enumerate(pairs):
            _check_shape(f"A.{t}", a, self._A[t].shape)
            _check_shape(f"B.{t}", b, (self.num_outputs, self.rank))
        for t, (a, b) in enumerate(pairs):
            self._A[t][...] = a
            self._B[:, self._h_cols[t]] = b

    def state_dict(self) -> dict[str, np.ndarray]:
        """Per-tap copies named `A.0`, `B.0`, `A.1`, ...: the adapter state file format."""
        out: dict[str, np.ndarray] = {}
        for t, (a, b) in enumerate(self.per_tap()):
            out[f"A.{t}"], out[f"B.{t}"] = a, b
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        names = {f"{p}.{t}" for t in range(len(self.tap_sizes)) for p in "AB"}
        if set(state) != names:
            missing, extra = sorted(names - set(state)), sorted(set(state) - names)
            raise StateError(f"adapter state arrays: missing {missing}, unexpected {extra}")
        self.load_per_tap([(state[f"A.{t}"], state[f"B.{t}"]) for t in range(len(self.tap_sizes))])


def _check_spec(sizes: tuple[int, ...], rank: int, num_outputs: int, a_init: Sequence[np.ndarray]) -> None:
    if not sizes or min(sizes) < 1:
        raise RuntimeInputError(f"head needs at least one tap of positive size, got {sizes}")
    if rank < 1 or num_outputs < 1:
        raise RuntimeInputError(f"head rank and num_outputs must be >= 1, got rank={rank}, num_outputs={num_outputs}")
    if len(a_init) != len(sizes):
        raise RuntimeInputError(f"head has {len(sizes)} taps but {len(a_init)} initial A matrices")
    for t, (a, d) in enumerate(zip(a_init, sizes)):
        if np.shape(a) != (rank, d):
            raise RuntimeInputError(f"initial A of tap {t}: expected shape {(rank, d)} (rank x tap size), found {np.shape(a)}")


def _check_shape(name: str, a: np.ndarray, shape: tuple[int, ...]) -> None:
    if np.shape(a) != shape:
        raise StateError(f"adapter state array {name}: expected shape {shape}, found {np.shape(a)}")
    if not np.all(np.isfinite(a)):
        raise StateError(f"adapter state array {name} holds NaN or inf")
