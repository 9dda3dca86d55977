"""Fine-tuning a grown head (`s2rt.heads.grown`) in two stages, the old classes pinned.

1. The old classes: the plain skip2lora head over the bundle's C classes (A and the old
   rows of B) trains on the old-class samples alone, on the fused path, exactly as the
   model would be fine-tuned if the new classes did not exist.
2. The new classes: A and the old rows of B are frozen (`GrownHead.pinned`); the new rows
   (w_k, b_k and B's rows for them) start from the ridge fit to the *tuned* old logits
   (`GrownHead.prepare`) and train on every sample in the softmax over C + K classes.

So the old classes' logits are those of the model fine-tuned without the new classes, and
adding a class can cost an old class only the samples the new rows take. Training all of
it jointly instead let the new-class samples move the shared adapters: on har_open
(seeds 0-5) the old classes lost up to 3.7 points that way, all of it confusions among
old classes; in two stages the largest loss is 0.1 point (README, "New classes").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from s2rt.heads.grown import GrownHead, PaddedFeatures
from s2rt.progress import ProgressCallback
from s2rt.trainer import TrainConfig, TrainReport, train


class RowSubset:
    """A feature source (`s2rt.trainer.FeatureSource`) serving the rows `rows` of `source`."""

    def __init__(self, source: Any, rows: np.ndarray) -> None:
        self.source, self.rows = source, rows
        self.prefetch_rows = getattr(source, "prefetch_rows", 0)
        self.y = np.asarray(source.y)[rows]

    def features(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.source.features(self.rows[np.asarray(idx)])  # type: ignore[no-any-return]


def train_grown(head: GrownHead, source: Any, y: np.ndarray, config: TrainConfig, progress: ProgressCallback | None = None) -> TrainReport:
    """Train `head` in place on samples 0..len(y)-1 of `source` (which serves the bundle's C
    frozen logits), old classes first, then the new ones (module docstring). The report is
    the second stage's, with both stages' times and either stage's divergence."""
    y = np.asarray(y)
    old = np.flatnonzero(y < head.frozen_outputs)
    first = None
    if len(old):
        plain = head.old_head()
        per_batch = None if progress is None else _per_batch(progress)
        first = train(plain, RowSubset(source, old), y[old], config, progress=per_batch)
        head.set_old(plain)
    head.pinned = True
    try:
        second = train(head, PaddedFeatures(source, head.num_outputs), y, config, progress=progress)
    finally:
        head.pinned = False
    return second if first is None else _merged(first, second)


def _per_batch(progress: ProgressCallback) -> ProgressCallback:
    """`progress` as a per-batch callback only: the epoch listener (bar, job record) closes once, after stage 2."""

    def call(epoch: int, epochs: int, batch: int, batches: int, loss: float) -> None:
        progress(epoch, epochs, batch, batches, loss)

    return call


def _merged(first: TrainReport, second: TrainReport) -> TrainReport:
    second.diverged = first.diverged or second.diverged
    if first.diverged:
        second.message = f"old classes: {first.message}" + (f"; new classes: {second.message}" if second.message else "")
    for name in ("time_features", "time_decode", "time_steps", "time_total"):
        setattr(second, name, getattr(first, name) + getattr(second, name))
    return second
