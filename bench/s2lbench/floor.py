"""A cached epoch against its floor: the bare NumPy GEMMs one epoch of the adapter head needs.

Per mini-batch of n samples, with taps x_l (n x d_l), rank r and C outputs, the head needs
    forward:  H_l = X_l A_l^T (each tap),  z = H B^T
    backward: dB = dz^T H,  G = dz B,  dA_l = G_l^T X_l (each tap)
The floor runs exactly those GEMMs (`ndarray.dot` into preallocated, contiguous outputs) for
every batch of an epoch and nothing else: no gather, loss, optimizer or Python loop
around them. The cached epoch is s2rt's trainer over a Skip-Cache that already holds
every sample, timed over several epochs.

Both are timed in CPU time of the calling thread (`time.thread_time`), medians of
repeats: on a shared machine a wall clock also counts the time other processes hold the
core, which a short floor run escapes far more often than a training run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from s2lbench.profiles import Profile
from s2lbench.timing import median


@dataclass
class _Batch:
    """Operands and outputs of one batch size, all contiguous."""

    x: list[np.ndarray]  # per tap, n x d_l
    h: list[np.ndarray]  # per tap, n x r
    h_all: np.ndarray  # n x L*r
    z: np.ndarray  # n x C
    dz: np.ndarray  # n x C
    dzt: np.ndarray  # C x n
    g: np.ndarray  # n x L*r
    gt: list[np.ndarray]  # per tap, r x n


def gemm_floor(tap_sizes: list[int], rank: int, classes: int, n: int, batch_size: int, repeats: int = 7) -> float:
    """Median seconds of one epoch's head GEMMs over n samples in batches of batch_size."""
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    hidden = len(tap_sizes) * rank
    sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    batches = {
        b: _Batch(
            [rand(b, d) for d in tap_sizes],
            [rand(b, rank) for _ in tap_sizes],
            rand(b, hidden),
            rand(b, classes),
            rand(b, classes),
            rand(classes, b),
            rand(b, hidden),
            [rand(rank, b) for _ in tap_sizes],
        )
        for b in set(sizes)
    }
    at = [rand(d, rank) for d in tap_sizes]
    da = [rand(rank, d) for d in tap_sizes]
    bt, b_, db = rand(hidden, classes), rand(classes, hidden), rand(classes, hidden)
    def epoch() -> None:  # ndarray.dot: np.dot's C routine without its Python-level dispatch, as s2rt calls it
        for size in sizes:
            p = batches[size]
            for x, a, h in zip(p.x, at, p.h):
                x.dot(a, h)  # H_l = X_l A_l^T
            p.h_all.dot(bt, p.z)  # z = H B^T
            p.dzt.dot(p.h_all, db)  # dB = dz^T H
            p.dz.dot(b_, p.g)  # G = dz B
            for g, x, d in zip(p.gt, p.x, da):
                g.dot(x, d)  # dA_l = G_l^T X_l

    epoch()
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        epoch()
        times.append(time.thread_time() - t0)
    return median(times)


def cached_epoch(bundle: Any, x: np.ndarray, y: np.ndarray, profile: Profile, batch_size: int, lr: float, epochs: int) -> dict[str, Any]:
    """Seconds per epoch of s2rt's trainer on a warm Skip-Cache, its GEMM floor and their ratio."""
    from s2rt.bundle.model import Optimizer
    from s2rt.cache import SkipCache
    from s2rt.features import CachedFeatures
    from s2rt.session import Model, new_head
    from s2rt.trainer import TrainConfig, train

    model = Model(bundle, threads=profile.s2rt_threads)
    source = CachedFeatures(model.frozen, x, y, SkipCache(bundle.cache, len(x)))
    source.features(np.arange(len(x)))  # every sample is now cached
    config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=lr, optimizer=Optimizer.ADAM)
    per_epoch = []
    for _ in range(5):
        head = new_head(bundle)
        t0 = time.thread_time()
        report = train(head, source, y, config)
        per_epoch.append((time.thread_time() - t0) / epochs)
    epoch_s = median(per_epoch)
    floor_s = gemm_floor([t.size for t in bundle.taps], bundle.head.rank, bundle.head.num_outputs, len(x), batch_size)
    from s2lbench.methods_s2rt import step_phases

    phases = {"cache_gather": report.time_features / epochs, **step_phases(report, epochs)}
    return {"epoch_s": epoch_s, "gemm_floor_s": floor_s, "ratio": epoch_s / floor_s, "phases_last_run_s": phases, "n": len(x)}
