"""oselm / oselm-rf: a closed-form ridge head to the logit residual, no epochs, no learning rate.

    u   = (x - mean) / std                            (standardized fused tap row)
    phi = [u, 1]                 (oselm)   or   [u, 1, relu(R u + b)]   (oselm-rf, K random features)
    z   = F + phi beta,   beta = argmin ||phi beta - T||^2 + lam ||beta||^2,   T = kappa (onehot - 1/C) - F

The target is what the frozen logits F miss: kappa times a centred one-hot, minus F. R (K x D)
and b (K) are drawn from the bundle's seed with `lora_a`'s SplitMix64 rule (streams beyond
the taps' indices), so they are regenerated on every device, never stored.

`fit` (the trainer's closed-form hook) reads the cache once, in chunks, for oselm: raw
float64 sums give both the standardization and Phi^T Phi, Phi^T T (`_OnePass`); oselm-rf
(its features need the standardization first) and fine-tune sets smaller than the features
read it twice (`Standardizer.fit`, then `_Accumulator`). kappa and lam are picked on the
validation split (the trainer's, or 20% of the training split held out here) from one
eigendecomposition of the fit part's Gram matrix: the whole grid then costs one GEMM and
a softmax. The final beta is the ridge solution over all training rows, from the same
eigenbasis when that is cheaper than a solve. That batch solution is, by the matrix inversion lemma, exactly
what recursive least squares reaches (`s2rt.heads.rls`, tested); `learn` continues from
it by RLS, one sample or chunk at a time (OS-ELM's online sequential phase).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from s2rt.bundle.model import Loss
from s2rt.errors import RuntimeInputError, StateError
from s2rt.head import FLOAT, FlatParameters
from s2rt.heads.branches import Branch, fold_standardization
from s2rt.heads.rls import RecursiveRidge, ridge_solve
from s2rt.heads.standardize import Standardizer, chunks, safe_std
from s2rt.lora_init import lora_a

RANDOM_FEATURES = 256  # oselm-rf (files written with another count, e.g. the earlier 1,024, still load)
MAX_RANDOM_FEATURES = 4096  # bounds what an adapter file can make `load_state_dict` regenerate
RF_STREAM = 1 << 20  # lora_a tap_index of R (b: RF_STREAM + 1): far beyond any tap index
KAPPAS = tuple(2.0**k for k in range(-1, 9))
LAMBDAS = tuple(10.0**k for k in range(-6, 2))  # times mean(diag(Phi^T Phi))
HOLDOUT = 0.2
MIN_SAMPLES = 10


def random_features(k: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """R (k x width), unit-variance rows on standardized inputs, and b in [-1, 1): from the seed."""
    r = lora_a(k, width, seed, RF_STREAM) * np.float32(math.sqrt(3.0))
    b = lora_a(1, k, seed, RF_STREAM + 1)[0] * np.float32(math.sqrt(k))
    return r, b


class OSELMHead(FlatParameters):
    def __init__(self, tap_sizes: Sequence[int], num_outputs: int, features: int = 0, seed: int = 0) -> None:
        self.tap_sizes = tuple(int(d) for d in tap_sizes)
        if not self.tap_sizes or min(self.tap_sizes) < 1 or num_outputs < 1 or features < 0:
            raise RuntimeInputError(f"oselm needs taps of positive size and outputs; got {self.tap_sizes}, {num_outputs}")
        self.tap_width = sum(self.tap_sizes)
        self.num_outputs = num_outputs
        self.seed = seed
        self.kappa, self.lam = 1.0, 1.0
        self.standardizer = Standardizer(self.tap_width)
        self._set_features(features)
        self._gram: tuple[Callable[[], np.ndarray], np.ndarray, int] | None = None  # for `learn`: Phi^T Phi (made on use), Phi^T T, rows
        self._rls: RecursiveRidge | None = None

    def _set_features(self, features: int) -> None:
        self.features = features
        self.dim = self.tap_width + 1 + features
        self._theta = np.zeros(self.dim * self.num_outputs, FLOAT)
        self._grad = np.zeros_like(self._theta)
        self.beta = self._theta.reshape(self.dim, self.num_outputs)
        self._rf = random_features(features, self.tap_width, self.seed) if features else None

    # -- features ----------------------------------------------------------------------
    def phi(self, u: np.ndarray) -> np.ndarray:
        """[u, 1, relu(R u + b)] (N x dim) float32 for standardized rows u."""
        out = np.empty((len(u), self.dim), FLOAT)
        out[:, : self.tap_width] = u
        out[:, self.tap_width] = 1.0
        if self._rf is not None:
            r, b = self._rf
            h = np.dot(u, r.T)
            h += b
            np.maximum(h, 0, out=out[:, self.tap_width + 1 :])
        return out

    def split_taps(self, X: np.ndarray) -> list[np.ndarray]:
        return [self.standardizer.apply(np.asarray(X, dtype=FLOAT), slice(0, self.tap_width))]

    def forward_taps(self, us: Sequence[np.ndarray], F: np.ndarray) -> np.ndarray:
        z = np.dot(self.phi(us[0]), self.beta)
        z += F
        return z

    def forward(self, X: np.ndarray, F: np.ndarray) -> np.ndarray:
        return self.forward_taps(self.split_taps(X), F)

    def backward(self, dz: np.ndarray) -> None:
        raise RuntimeInputError("oselm has no gradient step: it is solved in closed form by `fit` (s2rt train --method oselm)")

    def delta_logits(self, X: np.ndarray) -> np.ndarray:
        return np.dot(self.phi(self.split_taps(X)[0]), self.beta)

    def residual_target(self, F: np.ndarray, y: np.ndarray, kappa: float | None = None) -> np.ndarray:
        """kappa (onehot(y) - 1/C) - F, float64."""
        t = np.full((len(y), self.num_outputs), -1.0 / self.num_outputs)
        t[np.arange(len(y)), y] += 1.0
        t *= self.kappa if kappa is None else kappa
        t -= F
        return t

    # -- the trainer's closed-form hook --------------------------------------------------
    def fit(self, source: object, targets: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, config: Any) -> Any:
        """Standardize, accumulate the Gram matrix in one pass, pick kappa and lam on
        validation, solve. Returns the trainer's `TrainReport` (one "epoch")."""
        from s2rt.trainer import TrainReport, split_indices  # the trainer imports the methods

        if config.loss != Loss.SOFTMAX_CROSS_ENTROPY:
            raise RuntimeInputError("oselm fits classifiers: the bundle's loss must be softmax cross-entropy, this one is MSE")
        start = time.perf_counter()
        report = TrainReport(n_train=len(train_idx), n_val=len(val_idx))
        if len(train_idx) < MIN_SAMPLES:
            raise RuntimeInputError(
                f"oselm needs at least {MIN_SAMPLES} labelled samples (it picks kappa and lambda on a held-out part), got {len(train_idx)}"
            )
        if len(val_idx):
            fit_idx, held_idx, final_idx = train_idx, val_idx, train_idx
        else:
            inner = np.random.default_rng(config.seed)
            fit_pos, held_pos = split_indices(targets[train_idx], HOLDOUT, inner, stratify=True)
            fit_idx, held_idx, final_idx = train_idx[fit_pos], train_idx[held_pos], train_idx
        t0 = time.perf_counter()
        if self._rf is None and len(fit_idx) >= self.dim:  # standardization and Gram in the same pass
            acc: _Accumulator = _OnePass(self, source, targets, fit_idx, held_idx, held_in_moments=not len(val_idx))
        else:
            self.standardizer.fit(source, final_idx, self.tap_sizes)
            t0 = time.perf_counter()
            acc = _Accumulator(self, source, targets, fit_idx, held_idx)
        report.time_features = acc.seconds_features
        spectrum = _spectrum(acc)
        kappa, lam, val = _pick(acc, spectrum)
        with_held = not len(val_idx)  # the held-out part trains the final solution too
        cy, cf = (acc.cross_y + acc.held_cross_y, acc.cross_f + acc.held_cross_f) if with_held else (acc.cross_y, acc.cross_f)
        self.kappa, self.lam = kappa, lam
        cross = kappa * cy - cf

        def gram() -> np.ndarray:
            return acc.gram + acc.held_phi.T @ acc.held_phi if with_held else acc.gram

        beta = _final_solution(acc, spectrum, gram, cross, lam, with_held=with_held)
        if not np.all(np.isfinite(beta)):
            raise RuntimeInputError("oselm: the ridge solution is not finite (check the features for NaN/inf)")
        self.beta[...] = beta
        self._gram, self._rls = (gram, cross, len(final_idx)), None  # the Gram matrix only if `learn` needs it
        report.time_steps = time.perf_counter() - t0 - acc.seconds_features  # the solve: its one "step"
        report.epochs_run, report.best_epoch = 1, 1
        report.history = [{"epoch": 1, "train_loss": acc.fit_loss(beta, kappa), **val}]
        report.message = f"closed form: kappa={kappa:g}, lambda={lam:.3g} picked on {len(held_idx)} validation samples"
        report.time_total = time.perf_counter() - start
        return report

    def select(
        self, gram: np.ndarray, cross_y: np.ndarray, cross_f: np.ndarray, held_phi: np.ndarray, held_f: np.ndarray, held_y: np.ndarray
    ) -> tuple[float, float, dict[str, float]]:
        """`fit`'s choice of (kappa, lambda) from the training rows' sums (Phi^T Phi, Phi^T Y0, Phi^T F,
        float64) and the validation rows' Phi, F and labels: what an online learner re-picks them with."""
        return self._select(_Held(gram, cross_y, cross_f, held_phi, held_f, held_y))

    def _select(self, acc: _Accumulator | _Held) -> tuple[float, float, dict[str, float]]:
        """(kappa, lam, validation metrics) with the best validation accuracy (ties: lower loss)."""
        return _pick(acc, _spectrum(acc))

    # -- online: one RLS step per labelled sample -----------------------------------------
    def learn(self, X: np.ndarray, F: np.ndarray, y: np.ndarray) -> None:
        """Update beta with labelled rows by recursive least squares (after `fit`)."""
        rls = self.rls()
        u = self.split_taps(X)[0]
        rls.update(self.phi(u).astype(np.float64), self.residual_target(np.asarray(F, np.float64), np.asarray(y)))
        self.beta[...] = rls.beta

    def rls(self) -> RecursiveRidge:
        """The recursive least squares state `learn` continues (made from `fit`'s Gram matrix on first use)."""
        if self._rls is None:
            if self._gram is None:
                raise RuntimeInputError("oselm.learn: fit the head first (its kappa, lambda and Gram matrix come from fit)")
            gram, cross, rows = self._gram
            self._rls = RecursiveRidge.from_gram(gram(), cross, self.lam, rows)
        return self._rls

    def resume(self, rls: RecursiveRidge) -> None:
        """Continue learning from a saved RLS state (the head's standardization and kappa must be the ones it was made with)."""
        if rls.beta.shape != self.beta.shape:
            raise StateError(f"oselm RLS state: expected beta of shape {self.beta.shape}, found {rls.beta.shape}")
        self._rls, self._gram = rls, None
        self.beta[...] = rls.beta

    def snapshot(self) -> OSELMHead:
        """A copy to serve while this head keeps learning: its own beta, the same standardization and
        random features (never changed after `fit`), no RLS state."""
        out = copy.copy(self)
        out._theta = self._theta.copy()
        out._grad = np.zeros_like(out._theta)
        out.beta = out._theta.reshape(self.dim, self.num_outputs)
        out._gram = out._rls = None
        return out

    # -- export and state ------------------------------------------------------------------
    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) with X W + b = delta_logits(X): the standardization folded into beta (no random features)."""
        if self._rf is not None:
            raise RuntimeInputError("oselm-rf is not affine in the taps: its random ReLU features keep the NumPy path")
        d = self.tap_width
        w, shift = fold_standardization(self.beta[:d].T, self.standardizer.mean, self.standardizer.inv_std)
        return w.T, shift + self.beta[d]

    def export_branches(self) -> list[Branch]:
        """The linear part (taps and bias, standardization folded in) and, for oselm-rf, a ReLU branch."""
        s, d = self.standardizer, self.tap_width
        bounds = np.cumsum((0, *self.tap_sizes))
        cols = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        w, shift = fold_standardization(self.beta[:d].T, s.mean, s.inv_std)
        out = [Branch(tuple(w[:, c].astype(np.float32) for c in cols), (shift + self.beta[d]).astype(np.float32), False, None)]
        if self._rf is not None:
            r, b = self._rf
            wr, shift_r = fold_standardization(r, s.mean, s.inv_std)
            weights = tuple(wr[:, c].astype(np.float32) for c in cols)
            out.append(Branch(weights, (shift_r + b).astype(np.float32), True, self.beta[d + 1 :].T.copy()))
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """`beta` ((D + 1 + K) x C), the standardization `mean`, `std` and `ridge` = [kappa, lambda]."""
        return {"beta": self.beta.copy(), "ridge": np.array([self.kappa, self.lam], np.float32)} | self.standardizer.state()

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        names = {"beta", "ridge", "mean", "std"}
        if set(state) != names:
            missing, extra = sorted(names - set(state)), sorted(set(state) - names)
            raise StateError(f"adapter state arrays: missing {missing}, unexpected {extra}")
        self._adopt_feature_count(state["beta"])
        for name, shape in (("beta", self.beta.shape), ("ridge", (2,))):
            if np.shape(state[name]) != shape:
                raise StateError(f"adapter state array {name}: expected shape {shape}, found {np.shape(state[name])}")
            if not np.all(np.isfinite(state[name])):
                raise StateError(f"adapter state array {name} holds NaN or inf")
        self.standardizer.set(state["mean"], state["std"])
        self.beta[...] = state["beta"]
        self.kappa, self.lam = (float(v) for v in state["ridge"])
        self._gram = self._rls = None

    def _adopt_feature_count(self, beta: np.ndarray) -> None:
        """An oselm-rf file's beta rows say how many random features it was fitted with: take
        that count (the features are regenerated from the seed), so files from an earlier
        default keep loading."""
        if not self.features or np.ndim(beta) != 2 or np.shape(beta)[0] == self.dim:
            return
        features = np.shape(beta)[0] - self.tap_width - 1
        if not 1 <= features <= MAX_RANDOM_FEATURES:
            raise StateError(
                f"adapter state array beta: expected {self.tap_width} + 1 + K rows with 1 <= K <= {MAX_RANDOM_FEATURES} "
                f"random features, found {np.shape(beta)[0]} rows"
            )
        self._set_features(features)


@dataclass(frozen=True)
class _Spectrum:
    """Every ridge fit of the selection in one eigenbasis: the held-out rows' fitted residual is
    q diag(1 / (e + lam)) (kappa wy - wf). `v` and `live`: the Gram side's eigenvectors and the
    features they span (None on the kernel side)."""

    e: np.ndarray
    q: np.ndarray
    wy: np.ndarray
    wf: np.ndarray
    v: np.ndarray | None = None
    live: np.ndarray | None = None


def _spectrum(acc: _Accumulator | _Held) -> _Spectrum:
    """From the smaller side: the dim x dim Gram matrix, or, when fewer rows are fitted than
    there are features (random features on a small fine-tune set), the rows' kernel matrix
    Phi Phi^T, since (Phi^T Phi + lam I)^-1 Phi^T = Phi^T (Phi Phi^T + lam I)^-1: the same
    predictions, an eigendecomposition of rows^3 instead of dim^3. Features that are 0 on
    every fit row (a zero diagonal entry of a Gram matrix zeroes its row and column, and their
    cross sums are 0) have no say in any fit: they are left out of the decomposition."""
    if isinstance(acc, _Accumulator) and acc.fit_phi is not None:
        e, u = np.linalg.eigh(acc.fit_phi @ acc.fit_phi.T)
        return _Spectrum(e, (acc.held_phi @ acc.fit_phi.T) @ u, u.T @ acc.fit_y0, u.T @ acc.fit_f)
    live = np.flatnonzero(np.diagonal(acc.gram) != 0)
    if len(live) == len(acc.gram):
        e, v = np.linalg.eigh(acc.gram)
        return _Spectrum(e, acc.held_phi @ v, v.T @ acc.cross_y, v.T @ acc.cross_f, v, live)
    e, v = np.linalg.eigh(acc.gram[np.ix_(live, live)])
    return _Spectrum(e, acc.held_phi[:, live] @ v, v.T @ acc.cross_y[live], v.T @ acc.cross_f[live], v, live)


def _pick(acc: _Accumulator | _Held, s: _Spectrum) -> tuple[float, float, dict[str, float]]:
    """Every (lam, kappa) of the grid scored on the held-out rows from the spectrum: one GEMM
    for all lambdas (n_val x dim x 2C each), kappa by broadcasting. The first best in
    (lam, kappa) order by validation accuracy, ties by lower loss."""
    scale = float(np.trace(acc.gram)) / acc.gram.shape[0]
    lams = np.array(LAMBDAS) * scale
    c, n = acc.held_f.shape[1], len(acc.held_y)
    if not n:  # nothing to score: the grid's first pair
        return KAPPAS[0], float(lams[0]), {"val_loss": math.nan, "val_accuracy": math.nan}
    d = 1.0 / np.maximum(s.e[None, :] + lams[:, None], lams[:, None])  # L x r
    w = np.concatenate([s.wy, s.wf], axis=1)  # r x 2C
    g = ((w.T[:, None, :] * d[None, :, :]).reshape(-1, len(s.e)) @ s.q.T).reshape(2 * c, len(lams), n)
    # classes first (C x K x L x N): the softmax reduces over the outer axis, elementwise
    z = (acc.held_f.T[:, None, :] - g[c:])[:, None] + np.array(KAPPAS)[None, :, None, None] * g[:c, None]
    accuracies = np.mean(z.argmax(axis=0) == acc.held_y, axis=2)  # K x L
    # the loss only breaks ties between the most accurate pairs: the softmax for those alone
    ks, ls = np.nonzero(accuracies == accuracies.max())
    top = z[:, ks, ls, :]  # C x M x N
    top -= top.max(axis=0)
    picked = top[acc.held_y, :, np.arange(n)]  # N x M
    losses = np.mean(np.log(np.exp(top).sum(axis=0)), axis=1) - np.mean(picked, axis=0)
    best: tuple[float, float, float] | None = None  # (loss, kappa, lam)
    for m in sorted(range(len(ks)), key=lambda m: (ls[m], ks[m])):  # (lam, kappa) order: the first lowest loss
        if best is None or losses[m] < best[0]:
            best = (float(losses[m]), KAPPAS[ks[m]], float(lams[ls[m]]))
    assert best is not None
    return best[1], best[2], {"val_loss": best[0], "val_accuracy": float(accuracies.max())}


def _final_solution(
    acc: _Accumulator, s: _Spectrum, gram: Callable[[], np.ndarray], cross: np.ndarray, lam: float, *, with_held: bool
) -> np.ndarray:
    """(gram() + lam I)^-1 cross, where gram() is the fit rows' Gram matrix (+ the held-out rows'
    when `with_held`), made only for a solve. From the selection's eigenbasis when that is cheaper than a solve:
    without the held-out rows it is v diag(1 / (e + lam)) v^T cross; with them (n_held < dim / 2),
    by the matrix inversion lemma in that basis, an n_held x n_held solve. The kernel side
    has no basis of the features: a solve."""
    dim = len(acc.gram)
    if s.v is None or s.live is None or (with_held and 2 * len(acc.held_phi) >= dim):  # else a solve costs less
        return ridge_solve(gram(), cross, lam)
    live = s.live
    is_dead = np.ones(dim, bool)
    is_dead[live] = False
    dead = np.flatnonzero(is_dead)
    e = np.concatenate([s.e, np.zeros(len(dead))])
    inv = 1.0 / np.maximum(e + lam, lam)
    b = np.concatenate([s.v.T @ cross[live], cross[dead]])
    if with_held:  # (A + H^T H)^-1 = A^-1 - A^-1 H^T (I + H A^-1 H^T)^-1 H A^-1, A diagonal here
        h = np.concatenate([s.q, acc.held_phi[:, dead]], axis=1)
        hd = h * inv
        small = hd @ h.T
        small[np.diag_indices_from(small)] += 1.0
        b = b - h.T @ np.linalg.solve(small, hd @ b)
    w = inv[:, None] * b
    out = np.empty_like(cross)
    out[live] = s.v @ w[: len(live)]
    out[dead] = w[len(live) :]
    return out


@dataclass(frozen=True)
class _Held:
    gram: np.ndarray
    cross_y: np.ndarray
    cross_f: np.ndarray
    held_phi: np.ndarray
    held_f: np.ndarray
    held_y: np.ndarray


class _Accumulator:
    """One chunked pass: Phi^T Phi, Phi^T Y0 and Phi^T F (float64) of the fit rows, Phi^T Y0
    and Phi^T F of the held-out rows; the held-out rows' Phi, F and labels are kept for selection
    (and their Gram matrix for the final fit),
    and the fit rows' Phi, F and centred one-hot too when they are fewer than the features
    (`_spectrum` then decomposes their kernel matrix; they take no more room than the Gram)."""

    def __init__(self, head: OSELMHead, source: object, targets: np.ndarray, fit_idx: np.ndarray, held_idx: np.ndarray) -> None:
        dim, c = head.dim, head.num_outputs
        self.gram, self.cross_y, self.cross_f = np.zeros((dim, dim)), np.zeros((dim, c)), np.zeros((dim, c))
        self.held_cross_y, self.held_cross_f = np.zeros((dim, c)), np.zeros((dim, c))
        self.sq_y = self.sq_yf = self.sq_f = 0.0
        self.rows = len(fit_idx)
        held_phi, held_f = [], []
        fit_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = [] if len(fit_idx) < dim else None
        self.seconds_features = 0.0
        order = np.concatenate([fit_idx, held_idx])
        is_held = np.zeros(len(order), bool)
        is_held[len(fit_idx) :] = True
        at = 0
        clock = time.perf_counter
        for part, X, F in chunks(source, order):
            t0 = clock()
            phi = head.phi(head.split_taps(X)[0]).astype(np.float64)
            F64 = F.astype(np.float64)
            y0 = head.residual_target(np.zeros_like(F64), targets[part], kappa=1.0)
            held = is_held[at : at + len(part)]
            at += len(part)
            self.seconds_features += clock() - t0
            if (~held).any():
                p = phi[~held]
                self.gram += p.T @ p
                self.cross_y += p.T @ y0[~held]
                self.cross_f += p.T @ F64[~held]
            if held.any():  # their Gram matrix is made from held_phi when the final fit needs it
                self.held_cross_y += phi[held].T @ y0[held]
                self.held_cross_f += phi[held].T @ F64[held]
            if fit_rows is not None and (~held).any():
                fit_rows.append((phi[~held], y0[~held], F64[~held]))
            if (~held).any():
                self.sq_y += float(np.vdot(y0[~held], y0[~held]))
                self.sq_yf += float(np.vdot(y0[~held], F64[~held]))
                self.sq_f += float(np.vdot(F64[~held], F64[~held]))
            if held.any():
                held_phi.append(phi[held])
                held_f.append(F64[held])
        self.held_phi = np.concatenate(held_phi) if held_phi else np.zeros((0, dim))
        self.held_f = np.concatenate(held_f) if held_f else np.zeros((0, c))
        self.held_y = targets[held_idx]
        self.fit_phi: np.ndarray | None = None
        self.fit_y0 = self.fit_f = np.zeros((0, c))
        if fit_rows:
            self.fit_phi, self.fit_y0, self.fit_f = (np.concatenate(part) for part in zip(*fit_rows))

    def fit_loss(self, beta: np.ndarray, kappa: float) -> float:
        """Mean squared residual ||Phi beta - T||^2 / (rows * C) on the fit rows, from the sums."""
        cross = kappa * self.cross_y - self.cross_f
        t2 = kappa * kappa * self.sq_y - 2 * kappa * self.sq_yf + self.sq_f
        sse = float(np.vdot(beta, self.gram @ beta)) - 2 * float(np.vdot(beta, cross)) + t2
        return max(sse, 0.0) / max(self.rows * beta.shape[1], 1)


class _OnePass(_Accumulator):
    """`_Accumulator`'s sums for oselm (no random features, at least as many fit rows as
    features) from the same single pass that measures the standardization: raw float64 sums
    of z = x - x0 (x0: the first row, so a constant feature stays exactly 0 and the centring
    below cancels nothing large), then, with c = mean - x0 and s = the sum of z over the fit rows,

        sum (x - mean)(x - mean)^T = Z^T Z - c s^T - s c^T + n c c^T,

    scaled by 1/std on both sides: the Gram matrix of the standardized rows without a second
    pass over the cache. The held-out rows (few) are standardized and kept as `_Accumulator`
    keeps them. `held_in_moments`: the held-out rows are part of the final fit (the
    standardization is over them too)."""

    def __init__(
        self, head: OSELMHead, source: object, targets: np.ndarray, fit_idx: np.ndarray, held_idx: np.ndarray, *, held_in_moments: bool
    ) -> None:
        width, c, n_fit, dim = head.tap_width, head.num_outputs, len(fit_idx), head.dim
        self.gram, self.cross_y, self.cross_f = np.zeros((dim, dim)), np.zeros((dim, c)), np.zeros((dim, c))
        zz = self.gram[:width, :width]  # accumulated and standardized in place
        zs, zy, zf = np.zeros(width), np.zeros((width, c)), np.zeros((width, c))
        ys, fs = np.zeros(c), np.zeros(c)
        held_s, held_sq = np.zeros(width), np.zeros(width)
        self.sq_y = self.sq_yf = self.sq_f = 0.0
        self.rows = n_fit
        held_x: list[np.ndarray] = []
        held_f: list[np.ndarray] = []
        held_y0: list[np.ndarray] = []
        x0: np.ndarray | None = None
        at = 0
        for part, X, F in chunks(source, np.concatenate([fit_idx, held_idx])):
            if x0 is None:
                x0 = X[0].astype(np.float64)
            z = np.subtract(X, x0, dtype=np.float64)
            F64 = F.astype(np.float64)
            y0 = head.residual_target(np.zeros_like(F64), targets[part], kappa=1.0)
            k = min(max(n_fit - at, 0), len(part))  # the fit rows come first
            at += len(part)
            if k:
                p, py, pf = z[:k], y0[:k], F64[:k]
                zz += p.T @ p
                zs += p.sum(axis=0)
                zy += p.T @ py
                zf += p.T @ pf
                ys += py.sum(axis=0)
                fs += pf.sum(axis=0)
                self.sq_y += float(np.vdot(py, py))
                self.sq_yf += float(np.vdot(py, pf))
                self.sq_f += float(np.vdot(pf, pf))
            if k < len(part):
                h = z[k:]
                held_s += h.sum(axis=0)
                held_sq += np.einsum("ij,ij->j", h, h)
                held_x.append(X[k:])
                held_f.append(F64[k:])
                held_y0.append(y0[k:])
        if x0 is None:
            raise ValueError("oselm's pass needs at least one sample")
        n = n_fit + (len(held_idx) if held_in_moments else 0)
        total = zs + held_s if held_in_moments else zs
        square = np.diagonal(zz) + held_sq if held_in_moments else np.diagonal(zz).copy()
        mean_z = total / n
        std = np.sqrt(np.maximum(square / n - mean_z * mean_z, 0.0))
        head.standardizer.set(x0 + mean_z, safe_std(std, head.tap_sizes))
        shift = head.standardizer.mean.astype(np.float64) - x0
        inv = head.standardizer.inv_std.astype(np.float64)
        # Z^T Z - c s^T - s c^T + n c c^T = Z^T Z - c t^T - t c^T with t = s - n c / 2, scaled in place
        zz *= inv[:, None]
        zz *= inv
        a, b = inv * shift, inv * (zs - 0.5 * n_fit * shift)
        zz -= np.stack([a, b], axis=1) @ np.stack([b, a])
        self.gram[:width, width] = self.gram[width, :width] = inv * (zs - n_fit * shift)
        self.gram[width, width] = n_fit
        for cross, raw, sums in ((self.cross_y, zy, ys), (self.cross_f, zf, fs)):
            cross[:width] = inv[:, None] * (raw - np.outer(shift, sums))
            cross[width] = sums
        self.held_phi = head.phi(head.split_taps(np.concatenate(held_x))[0]).astype(np.float64) if held_x else np.zeros((0, dim))
        self.held_f = np.concatenate(held_f) if held_f else np.zeros((0, c))
        self.held_y = targets[held_idx]
        hy = np.concatenate(held_y0) if held_y0 else np.zeros((0, c))
        self.held_cross_y, self.held_cross_f = self.held_phi.T @ hy, self.held_phi.T @ self.held_f
        self.fit_phi = None
        self.fit_y0 = self.fit_f = np.zeros((0, c))
        self.seconds_features = 0.0
