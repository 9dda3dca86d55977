"""New classes on the device: a Skip2-LoRA head grown by K rows for labels the bundle lacks.

The bundle's frozen segment knows C classes and outputs C frozen logits F; the
Skip-Cache stores exactly those. A grown head scores C + K classes:

    z_old = F            + s sum_l B_l[:C] A_l x_l          (the bundle's classes, as before)
    z_new = x_L W^T + b  + s sum_l B_l[C:] A_l x_l          (K new classes)

x_L is the last tap, the input of the classifier layer, so x_L W^T + b is exactly the
row a classifier layer trained with the new class would have had: the new class gets
the same kind of logit the old ones have, and the adapters correct both the same way.
The new classes' frozen logits are zero, so the cache (C frozen logits per sample) stays
valid: the K extra columns come from the head alone (`pad_logits`). Training runs in two
stages (`s2rt.heads.grown_train`): the old classes' adapters on the old-class samples,
then W, b and B's new rows with the rest pinned (`pinned`), in the softmax over C + K.

Initialisation (`prepare`, once, from the training split's cached rows): a learned
constant or the class mean of x_L alone start the new logit on the wrong scale (the
frozen logits are in the network's units, and x_L's mean is shared by every class).
Instead W_k, b_k are a ridge fit on [x_L, 1] to the score the new class should have:
the best old logit plus a margin m on class k's samples, minus m on every other sample
(m = the median top-1 minus top-2 gap of the old logits, at least 1). The old logits are
the tuned ones, F plus the adapters' correction (after stage 1), which the new rows will
compete with (fitting to F alone, over seeds 0-5: har_open's lowest new-class recall
0.910 against 0.917, digits without 8 and 9 lost 2.9 old-class points against 1.9).
So the new class starts near-separated, as a nearest-class-mean row would be in the
classifier's own units; training then only refines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from s2rt.errors import RuntimeInputError, S2LError, StateError
from s2rt.head import FLOAT, AdapterHead
from s2rt.heads.branches import Branch

MAX_NEW_CLASSES = 1024
MAX_LABEL_CHARS = 200
RIDGE = 1e-3  # lambda relative to the mean diagonal of [x_L, 1]^T [x_L, 1]
NEW_W, NEW_B = "new.W", "new.b"
PREPARE_ROWS = 4096  # rows per features() call of the initialisation


class GrownHead:
    """A skip2lora head over C + K outputs plus a dense row per new class on the last tap.

    `frozen_outputs` is C (the bundle's classes), `num_outputs` C + K. `forward` takes the
    frozen logits padded to C + K columns (zeros in the new ones, see `pad_logits`)."""

    def __init__(self, base: AdapterHead, frozen_outputs: int) -> None:
        extra = base.num_outputs - frozen_outputs
        if frozen_outputs < 1 or not 1 <= extra <= MAX_NEW_CLASSES:
            raise RuntimeInputError(
                f"grown head: expected 1..{MAX_NEW_CLASSES} new classes over {frozen_outputs}, the base head has {base.num_outputs} outputs"
            )
        self.base = base
        self.frozen_outputs = frozen_outputs
        self.num_outputs = base.num_outputs
        self.tap_width = base.tap_width
        d = base.tap_sizes[-1]
        self._last = slice(self.tap_width - d, self.tap_width)
        self._new = np.zeros((extra, d + 1), FLOAT)  # [W | b], one row per new class
        self._dnew = np.zeros_like(self._new)
        self._x: np.ndarray | None = None
        self.pinned = False  # backward leaves A and the old rows of B without gradient (s2rt.heads.grown_train)

    @property
    def extra(self) -> int:
        return self.num_outputs - self.frozen_outputs

    @property
    def num_parameters(self) -> int:
        return self.base.num_parameters + self._new.size

    def parameters(self) -> dict[str, np.ndarray]:
        return {"theta": self.base.parameters()["theta"], "new": self._new}

    @property
    def grads(self) -> dict[str, np.ndarray]:
        return {"theta": self.base.grads["theta"], "new": self._dnew}

    def split_taps(self, X: np.ndarray) -> list[np.ndarray]:
        return self.base.split_taps(X)

    def _rows(self, x_last: np.ndarray) -> np.ndarray:
        W, b = self._new[:, :-1], self._new[:, -1]
        return np.dot(x_last, W.T) + b

    # forward: z = base(x, F) with z[:, C:] += x_L W^T + b
    def forward_taps(self, xs: Sequence[np.ndarray], F: np.ndarray) -> np.ndarray:
        z = self.base.forward_taps(xs, F)
        self._x = xs[-1]
        z[:, self.frozen_outputs :] += self._rows(self._x)
        return z

    def forward(self, X: np.ndarray, F: np.ndarray) -> np.ndarray:
        return self.forward_taps(self.split_taps(np.asarray(X, dtype=FLOAT)), F)

    # backward: the base's; dW = dz_new^T x_L, db = sum over the batch of dz_new
    def backward(self, dz: np.ndarray) -> None:
        if self._x is None:
            raise RuntimeError("GrownHead.backward called before forward")
        self.base.backward(dz)
        if self.pinned:  # only B's new rows (the last K of theta's B block) and the new rows learn
            g = self.base.grads["theta"]
            g[: g.size - self.extra * len(self.base.tap_sizes) * self.base.rank] = 0.0
        dz_new = dz[:, self.frozen_outputs :]
        self._dnew[:, :-1] = np.dot(dz_new.T, self._x)
        self._dnew[:, -1] = dz_new.sum(axis=0)

    def old_head(self) -> AdapterHead:
        """The plain head over the bundle's C classes: this head's A and the old rows of B (copies)."""
        base, C = self.base, self.frozen_outputs
        pairs = base.per_tap()
        plain = AdapterHead(base.tap_sizes, base.rank, base.alpha, C, [a for a, _ in pairs])
        plain.load_per_tap([(a, b[:C]) for a, b in pairs])
        return plain

    def set_old(self, plain: AdapterHead) -> None:
        """Take A and the old rows of B from `plain` (an `old_head` trained on its own); the new rows stay."""
        C = self.frozen_outputs
        self.base.load_per_tap([(a, np.vstack([b, mine[C:]])) for (a, b), (_, mine) in zip(plain.per_tap(), self.base.per_tap())])

    def delta_logits(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=FLOAT)
        z = self.base.delta_logits(X)
        z[:, self.frozen_outputs :] += self._rows(X[:, self._last])
        return z

    def prepare(self, source: Any, train_idx: np.ndarray) -> None:
        """The ridge initialisation (module docstring) of the new rows that are still zero
        (rows trained before, e.g. loaded with --init, are kept), from the training split in chunks."""
        fresh = ~self._new.any(axis=1)
        if not fresh.any():
            return
        idx, y, C = np.asarray(train_idx), np.asarray(source.y), self.frozen_outputs
        chunks = [idx[i : i + PREPARE_ROWS] for i in range(0, len(idx), PREPARE_ROWS)]
        best, gaps = [], []
        for chunk in chunks:
            F = self._old_logits(*source.features(chunk))
            top2 = np.sort(F, axis=1)[:, -2:] if C > 1 else np.hstack([F, F])
            best.append(top2[:, 1].astype(np.float64))
            gaps.append(top2[:, 1] - top2[:, 0])
        margin = max(1.0, float(np.median(np.concatenate(gaps)))) if len(idx) else 1.0
        d = self._new.shape[1]
        gram, rhs = np.zeros((d, d)), np.zeros((d, self.extra))
        for chunk, top in zip(chunks, best):
            x = np.hstack([source.features(chunk)[0][:, self._last].astype(np.float64), np.ones((len(chunk), 1))])
            signs = np.where(y[chunk][:, None] == C + np.arange(self.extra)[None, :], 1.0, -1.0)
            gram += x.T @ x
            rhs += x.T @ (top[:, None] + margin * signs)
        gram[np.diag_indices_from(gram)] += RIDGE * max(float(np.trace(gram)) / d, 1e-12)
        self._new[fresh] = np.linalg.solve(gram, rhs).T[fresh].astype(FLOAT)

    def export_branches(self) -> list[Branch]:
        """One linear branch over C + K logits: W_l = s B_l A_l per tap, the new rows' W added
        to the last tap's, their b as the bias (0 for the old classes). The export widens the
        frozen logits to C + K with zeros first, as `pad_logits` does."""
        weights = [(self.base.scaling * (b.astype(np.float64) @ a.astype(np.float64))) for a, b in self.base.per_tap()]
        weights[-1][self.frozen_outputs :] += self._new[:, :-1]
        bias = np.zeros(self.num_outputs, np.float32)
        bias[self.frozen_outputs :] = self._new[:, -1]
        return [Branch(tuple(w.astype(np.float32) for w in weights), bias, False, None)]

    def _old_logits(self, X: np.ndarray, F: np.ndarray) -> np.ndarray:
        """The old classes' logits as the head gives them now: F plus the adapters' correction."""
        C = self.frozen_outputs
        return F[:, :C] + self.base.delta_logits(X)[:, :C]

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.base.state_dict() | {NEW_W: self._new[:, :-1].copy(), NEW_B: self._new[:, -1].copy()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        shapes = {NEW_W: (self.extra, self._new.shape[1] - 1), NEW_B: (self.extra,)}
        for name, shape in shapes.items():
            a = state.get(name)
            if a is None:
                raise StateError(f"adapter state arrays: missing {name!r} (the new classes' rows)")
            if a.shape != shape or not np.isfinite(a).all():
                raise StateError(f"adapter state array {name}: expected finite {shape}, found {a.shape}")
        self.base.load_state_dict({k: v for k, v in state.items() if k not in shapes})
        self._new[:, :-1], self._new[:, -1] = state[NEW_W], state[NEW_B]


def grow(head: AdapterHead | GrownHead, frozen_outputs: int, extra: int) -> GrownHead:
    """A grown head over `head` (plain or already grown) with `extra` classes beyond the bundle's; the
    trained adapters and new rows carry over, the added rows start at zero."""
    old = head.base if isinstance(head, GrownHead) else head
    pairs = old.per_tap()
    base = AdapterHead(old.tap_sizes, old.rank, old.alpha, frozen_outputs + extra, [a for a, _ in pairs])
    base.load_per_tap([(a, np.vstack([b, np.zeros((base.num_outputs - len(b), b.shape[1]), FLOAT)])) for a, b in pairs])
    grown = GrownHead(base, frozen_outputs)
    if isinstance(head, GrownHead):
        grown._new[: head.extra] = head._new
    return grown


def pad_logits(F: np.ndarray, num_outputs: int) -> np.ndarray:
    """The frozen logits with zero columns for the new classes (their frozen logit is 0)."""
    if F.shape[1] == num_outputs:
        return F
    out = np.zeros((len(F), num_outputs), FLOAT)
    out[:, : F.shape[1]] = F
    return out


class PaddedFeatures:
    """A feature source (`s2rt.trainer.FeatureSource`) serving F padded to C + K columns."""

    def __init__(self, source: Any, num_outputs: int) -> None:
        self.source = source
        self.num_outputs = num_outputs
        self.prefetch_rows = getattr(source, "prefetch_rows", 0)
        self.y = source.y

    def features(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X, F = self.source.features(idx)
        return X, pad_logits(F, self.num_outputs)


def check_new_labels(value: object, bundle_labels: Sequence[str], where: str, error: type[S2LError] = StateError) -> tuple[str, ...]:
    """New class names (an adapter file's `new_labels`, or names from data): distinct,
    1..MAX_LABEL_CHARS characters, at most MAX_NEW_CLASSES, none of the bundle's."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_NEW_CLASSES:
        raise error(f"{where}: expected a list of 1..{MAX_NEW_CLASSES} new class names, found {str(value)[:80]}")
    for name in value:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_LABEL_CHARS:
            raise error(f"{where}: new class name {str(name)[:80]!r} must be a string of 1..{MAX_LABEL_CHARS} characters")
    clash = sorted(set(value) & set(bundle_labels))
    if clash or len(set(value)) != len(value):
        raise error(f"{where}: new class names {value[:8]} repeat or clash with the bundle's labels ({clash[:5]})")
    return tuple(value)
