"""Open-set workloads: classes the pretrained model never sees, which appear only on the device.

`hide_classes(workload, hidden)` drops the hidden classes from the pretraining splits
(train, val); the model is built over the remaining labels only. The device splits (ft,
test) keep every sample; their `y` indexes `labels + hidden` (the model's classes first,
then the hidden ones in the order given), and the device files name every label
(`save_npz(..., named=True)`), so `s2rt train --allow-new-classes` learns the hidden ones
as new classes by name.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from s2models.data.workload import Split, Workload


def hide_classes(workload: Workload, hidden: tuple[str, ...], name: str) -> Workload:
    """The workload without `hidden` in pretraining; `labels` are the model's (the others)."""
    missing = sorted(set(hidden) - set(workload.labels))
    if missing or not hidden or len(set(hidden)) != len(hidden) or len(hidden) >= len(workload.labels) - 1:
        raise ValueError(f"hide_classes: expected distinct labels of {workload.labels} leaving at least two, found {hidden}")
    kept = tuple(label for label in workload.labels if label not in hidden)
    order = kept + hidden
    remap = np.array([order.index(label) for label in workload.labels], dtype=np.int64)
    return replace(
        workload,
        name=name,
        labels=kept,
        train=_pretraining(workload.train, remap, len(kept)),
        val=_pretraining(workload.val, remap, len(kept)),
        ft=_relabelled(workload.ft, remap),
        test=_relabelled(workload.test, remap),
        config=workload.config | {"hidden_classes": list(hidden)},
    )


def device_labels(workload: Workload) -> tuple[str, ...]:
    """Every label the device splits' `y` indexes: the model's, then the hidden ones."""
    return workload.labels + tuple(workload.config.get("hidden_classes", ()))


def _relabelled(split: Split, remap: np.ndarray) -> Split:
    return Split(split.x, remap[split.y], split.group)


def _pretraining(split: Split, remap: np.ndarray, kept: int) -> Split:
    y = remap[split.y]
    rows = y < kept
    return Split(split.x[rows], y[rows], split.group[rows])
