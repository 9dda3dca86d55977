"""Split a workload's fine-tune samples over N simulated devices (seeded).

iid        each device a uniform random share
shards     the samples sorted by label, cut into 2N shards, two shards per device: most
           devices see two classes (the usual non-IID benchmark of federated learning);
           one shard each when there are fewer than 2N samples
subject    by who recorded the samples: the data file's `subject` array (one id per
           sample; HAR's fine-tune data has 5 subjects). N must be a multiple of the
           number of subjects: N = subjects gives each device one subject's samples,
           N = k * subjects splits each subject's samples at random over k devices
           (a subject wearing k devices). Any other N is refused.
recording  the same by the `recording` array: one recording per device (HAR: a subject,
           a wrist and an exercise, 70 in the fine-tune data, so each device sees one class),
           or each recording over k devices
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

Sources = Mapping[str, np.ndarray]


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


def by_source(name: str, ids: np.ndarray, devices: int, seed: int) -> list[np.ndarray]:
    """Each distinct id's samples on devices // (distinct ids) devices, in id order."""
    groups, counts = np.unique(ids, return_counts=True)
    if devices % len(groups):
        multiples = ", ".join(str(len(groups) * k) for k in (1, 2, 3))
        raise ValueError(f"--devices: the {name} partition needs a multiple of the {len(groups)} {name}s ({multiples}, ...), got {devices}")
    per_group = devices // len(groups)
    if per_group > counts.min():
        raise ValueError(f"--devices: {devices} gives each {name} {per_group} devices, but the smallest {name} has {counts.min()} samples")
    rng = np.random.default_rng(seed)
    parts = [np.array_split(rng.permutation(np.flatnonzero(ids == g)), per_group) for g in groups]
    return [np.sort(part) for group in parts for part in group]


PARTITIONS: dict[str, Callable[[np.ndarray, int, int], list[np.ndarray]]] = {"iid": iid, "shards": shards}
SOURCE_PARTITIONS = ("subject", "recording")  # named by the per-sample id array they read
NAMES = (*PARTITIONS, *SOURCE_PARTITIONS)


def partition(name: str, y: np.ndarray, devices: int, seed: int = 0, sources: Sources | None = None) -> list[np.ndarray]:
    """Row indices of each device's samples; `sources` holds the data file's per-sample id arrays."""
    if name not in NAMES:
        raise ValueError(f"unknown partition {name!r}; expected one of: {', '.join(NAMES)}")
    if not 1 <= devices <= len(y):
        raise ValueError(f"devices: expected 1 to {len(y)} (one sample each at least), got {devices}")
    if name in PARTITIONS:
        return PARTITIONS[name](np.asarray(y), devices, seed)
    ids = (sources or {}).get(name)
    if ids is None:
        found = sorted(sources or {}) or "x and y"
        raise ValueError(f"--partition {name}: the data has no {name!r} array (one id per sample), only {found}")
    ids = np.asarray(ids)
    if ids.shape != np.shape(y) or ids.dtype.kind not in "iu":
        raise ValueError(f"--partition {name}: the {name!r} array must hold one integer per sample, found {ids.dtype} {ids.shape}")
    return by_source(name, ids, devices, seed)
