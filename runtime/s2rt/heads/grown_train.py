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

from collections.abc import Mapping
from typing import Any

import numpy as np

from s2rt.heads.grown import GrownHead, PaddedFeatures
from s2rt.progress import EpochListener, ProgressCallback
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
    stages = 2 if len(old) else 1
    if len(old):
        plain = head.old_head()
        per_batch = None if progress is None else _Stage(progress, 0, stages)
        first = train(plain, RowSubset(source, old), y[old], config, progress=per_batch)
        head.set_old(plain)
    head.pinned = True
    try:
        listener = None if progress is None else _Listener(progress, stages - 1, stages)
        second = train(head, PaddedFeatures(source, head.num_outputs), y, config, progress=listener)
    finally:
        head.pinned = False
    return second if first is None else _merged(first, second)


class _Stage:
    """`progress` for one stage: epochs counted on over the stages (stage 2's epoch 1 is E + 1 of 2E),
    so a bar or a job's progress runs once from 0 to 1. Per batch only: the epoch listener
    (the held-out check of the grown head, the bar's close) is stage 2's."""

    def __init__(self, progress: ProgressCallback, stage: int, stages: int) -> None:
        self.progress, self.stage, self.stages = progress, stage, stages

    def __call__(self, epoch: int, epochs: int, batch: int, batches: int, loss: float) -> None:
        self.progress(self.stage * epochs + epoch, self.stages * epochs, batch, batches, loss)


class _Listener(_Stage):
    """The last stage's `_Stage`, passing on the epoch ends and the close when `progress` listens for them."""

    def epoch_end(self, epoch: int, epochs: int, metrics: Mapping[str, float]) -> None:
        if isinstance(self.progress, EpochListener):
            self.progress.epoch_end(self.stage * epochs + epoch, self.stages * epochs, metrics)

    def close(self) -> None:
        if isinstance(self.progress, EpochListener):
            self.progress.close()


def _merged(first: TrainReport, second: TrainReport) -> TrainReport:
    second.diverged = first.diverged or second.diverged
    if first.diverged:
        second.message = f"old classes: {first.message}" + (f"; new classes: {second.message}" if second.message else "")
    for name in ("time_features", "time_decode", "time_steps", "time_total"):
        setattr(second, name, getattr(first, name) + getattr(second, name))
    return second
