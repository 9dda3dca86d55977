"""What the image workloads (digits, MNIST) share: a stratified split and a device-side shift."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from sklearn.model_selection import train_test_split

from s2models.data.workload import Split, Workload


class SplitConfig(Protocol):
    @property
    def seed(self) -> int: ...
    @property
    def device_fraction(self) -> float: ...
    @property
    def val_fraction(self) -> float: ...
    @property
    def test_fraction(self) -> float: ...


def split_images(y: np.ndarray, config: SplitConfig) -> dict[str, np.ndarray]:
    """Image ids of each split (train, val, ft, test), every split stratified by class."""
    seed, ids = config.seed, np.arange(len(y))
    pretrain, device = train_test_split(ids, test_size=config.device_fraction, stratify=y, random_state=seed)
    train, val = train_test_split(pretrain, test_size=config.val_fraction, stratify=y[pretrain], random_state=seed)
    ft, test = train_test_split(device, test_size=config.test_fraction, stratify=y[device], random_state=seed)
    return {"train": train, "val": val, "ft": ft, "test": test}


def shifted_workload(
    name: str,
    source: str,
    labels: tuple[str, ...],
    images: np.ndarray,
    y: np.ndarray,
    ids: dict[str, np.ndarray],
    shift: Callable[[np.ndarray], np.ndarray],
    config: dict[str, Any],
) -> Workload:
    """Pretraining splits from the upright images; the device's (ft, test) images go through `shift`."""
    device = np.sort(np.concatenate([ids["ft"], ids["test"]]))
    shifted = images.copy()
    shifted[device] = shift(images[device])
    return Workload(
        name=name,
        source=source,
        labels=labels,
        train=_to_split(images, y, ids["train"]),
        val=_to_split(images, y, ids["val"]),
        ft=_to_split(shifted, y, ids["ft"]),
        test=_to_split(shifted, y, ids["test"]),
        config=config,
    )


def _to_split(images: np.ndarray, y: np.ndarray, ids: np.ndarray) -> Split:
    ids = np.sort(ids)
    return Split(images[ids].reshape(len(ids), -1).astype(np.float32), y[ids].astype(np.int64), ids.astype(np.int64))
