"""Split a workload's fine-tune samples over N simulated devices (seeded).

    iid     each device a uniform random share
    shards  the samples sorted by label, cut into 2N shards, two shards per device: most
            devices see two classes (the usual non-IID benchmark of federated learning);
            one shard each when there are fewer than 2N samples
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def iid(y: np.ndarray, devices: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(y))
    return [np.sort(part) for part in np.array_split(order, devices)]


def shards(y: np.ndarray, devices: int, seed: int, per_device: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    per_device = max(1, min(per_device, len(y) // devices))  # every shard holds a sample at least
    by_label = np.argsort(y + rng.random(len(y)) * 0.5, kind="stable")  # label order, shuffled within a label
    pieces = np.array_split(by_label, devices * per_device)
    chosen = rng.permutation(len(pieces)).reshape(devices, per_device)
    return [np.sort(np.concatenate([pieces[i] for i in row])) for row in chosen]


PARTITIONS: dict[str, Callable[[np.ndarray, int, int], list[np.ndarray]]] = {"iid": iid, "shards": shards}


def partition(name: str, y: np.ndarray, devices: int, seed: int = 0) -> list[np.ndarray]:
    if name not in PARTITIONS:
        raise ValueError(f"unknown partition {name!r}; expected one of: {', '.join(PARTITIONS)}")
    if not 1 <= devices <= len(y):
        raise ValueError(f"devices: expected 1 to {len(y)} (one sample each at least), got {devices}")
    parts = PARTITIONS[name](np.asarray(y), devices, seed)
    return parts
