"""The fine-tuning loop as it was before the fused steps (s2rt.fused), kept only to pin the new
one to it: one batch at a time through the head's own `forward_taps`/`backward`, the unfused
losses of `s2rt.loss`, and the optimizers' original update code (torch's rules, one ufunc at a
time, no gradient folding). Same validation split, epoch orders, chunking and early stopping
as `s2rt.trainer.train`; no divergence guard (the pinned runs stay finite).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from s2rt.bundle.model import Loss, Optimizer
from s2rt.loss import LOSSES
from s2rt.trainer import TrainConfig, evaluate, prepare_targets, split_indices

Params = Mapping[str, np.ndarray]


class ReferenceSGD:
    def __init__(self, params: Params, lr: float) -> None:
        self.params, self.lr = params, lr
        self._tmp = {k: np.empty_like(p) for k, p in params.items()}

    def step(self, grads: Params) -> None:
        for k, p in self.params.items():
            np.multiply(grads[k], self.lr, out=self._tmp[k])
            p -= self._tmp[k]


class ReferenceAdam:
    def __init__(self, params: Params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps, self.steps = params, lr, betas, eps, 0
        self._tmp = {k: np.empty_like(p) for k, p in params.items()}
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}

    def step(self, grads: Params) -> None:
        self.steps += 1
        b1, b2 = self.betas
        step_size = self.lr / (1.0 - b1**self.steps)
        inv = 1.0 / (math.sqrt(1.0 - b2**self.steps) * step_size)
        eps = self.eps / step_size
        for k, p in self.params.items():
            g, tmp, m, v = grads[k], self._tmp[k], self.m[k], self.v[k]
            np.subtract(g, m, out=tmp)
            tmp *= 1.0 - b1
            m += tmp
            v *= b2
            np.multiply(g, g, out=tmp)
            tmp *= 1.0 - b2
            v += tmp
            np.sqrt(v, out=tmp)
            tmp *= inv
            tmp += eps
            np.divide(m, tmp, out=tmp)
            p -= tmp


OPTIMIZERS = {Optimizer.SGD: ReferenceSGD, Optimizer.ADAM: ReferenceAdam}


def reference_train(head, source, y: np.ndarray, config: TrainConfig) -> list[dict[str, float]]:
    """Train `head` in place the old way; returns the per-epoch history."""
    targets = prepare_targets(y, head.num_outputs, config.loss)
    rng = np.random.default_rng(config.seed)
    train_idx, val_idx = split_indices(targets, config.val_fraction, rng, stratify=config.loss == Loss.SOFTMAX_CROSS_ENTROPY)
    params = head.parameters()
    optimizer = OPTIMIZERS[config.optimizer](params, config.learning_rate)
    loss_fn, bs = LOSSES[config.loss], config.batch_size
    batches = -(-len(train_idx) // bs)
    prefetch = getattr(source, "prefetch_rows", 0)
    per_call = batches if prefetch >= len(train_idx) else max(1, prefetch // bs)
    history, best_loss, best, waited = [], math.inf, None, 0
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(train_idx) if config.shuffle else train_idx
        total = 0.0
        for first in range(0, batches, per_call):
            idx = order[first * bs : (first + per_call) * bs]
            X, F = source.features(idx)
            xs, ys = head.split_taps(X), targets[idx]
            for b in range(first, min(first + per_call, batches)):
                rows = slice((b - first) * bs, (b - first + 1) * bs)
                loss, dz = loss_fn(head.forward_taps([x[rows] for x in xs], F[rows]), ys[rows])
                head.backward(dz)
                optimizer.step(head.grads)
                total += loss * len(dz)
        entry = {"epoch": epoch, "train_loss": total / len(order)}
        if len(val_idx):
            entry["val_loss"] = evaluate(head, source, targets, bs, loss=config.loss, idx=val_idx)["loss"]
        history.append(entry)
        if not len(val_idx):
            continue
        if entry["val_loss"] < best_loss:
            best_loss, waited = entry["val_loss"], 0
            if config.patience:
                best = {k: v.copy() for k, v in params.items()}
        else:
            waited += 1
            if config.patience and waited >= config.patience:
                break
    if best is not None:
        for k, v in params.items():
            v[...] = best[k]
    return history
