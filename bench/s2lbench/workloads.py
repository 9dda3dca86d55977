"""The benchmark's workloads: the committed models and device data listed in models/models.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"


@dataclass(frozen=True)
class Data:
    x: np.ndarray  # (N, *input shape) float32
    y: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray) -> Data:
        return Data(np.ascontiguousarray(self.x[idx]), np.ascontiguousarray(self.y[idx]))


@dataclass(frozen=True)
class Workload:
    name: str
    onnx: Path  # the pretrained model every method starts from
    ft: Data  # the device's labelled samples: what every method fine-tunes on
    test: Data  # the shifted test split
    classes: tuple[str, ...]
    kind: str  # "mlp" or "cnn"

    def subset(self, max_ft: int | None, max_test: int | None, seed: int = 0) -> Workload:
        """A stratified random subset (for the quick slice); None keeps a split whole."""
        return Workload(self.name, self.onnx, _subset(self.ft, max_ft, seed), _subset(self.test, max_test, seed), self.classes, self.kind)


def _subset(data: Data, n: int | None, seed: int) -> Data:
    if n is None or n >= len(data):
        return data
    return data.take(stratified_take(data.y, n, seed))


def stratified_take(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of exactly n samples, each class in proportion (seeded)."""
    rng = np.random.default_rng([seed, 19])
    key = np.empty(len(y))
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        key[members] = (np.arange(len(members)) + rng.uniform()) / len(members)  # spread each class over [0, 1)
    return np.sort(np.argsort(key, kind="stable")[:n])


def read_npz(path: Path, sample_shape: tuple[int, ...] | None = None) -> Data:
    """x (reshaped to `sample_shape` per sample when given) and y of an npz file."""
    with np.load(path, allow_pickle=False) as arrays:
        x = np.ascontiguousarray(arrays["x"], dtype=np.float32)
        y = arrays["y"].astype(np.int64)
    return Data(x.reshape(len(x), *sample_shape) if sample_shape else x, y)


def index(models: Path = MODELS) -> dict[str, dict]:
    return json.loads((models / "models.json").read_text())


def available(models: Path = MODELS) -> list[str]:
    """Names of the workloads in models.json, MLPs first."""
    entries = index(models)
    return sorted(entries, key=lambda n: (_kind(n, entries[n]) != "mlp", n))


def _kind(name: str, entry: dict) -> str:
    return "cnn" if "cnn" in name or "cnn" in entry.get("onnx", "") else "mlp"


def load(name: str, models: Path = MODELS) -> Workload:
    entries = index(models)
    if name not in entries:
        raise KeyError(f"workload {name!r} is not in {models / 'models.json'}; known: {', '.join(sorted(entries))}")
    entry = entries[name]
    shape = tuple(entry["input"]["shape"][1:])  # the CNNs share the MLPs' flat npz files
    return Workload(
        name=name,
        onnx=models / entry["onnx"],
        ft=read_npz(models / entry["data"]["ft"], shape),
        test=read_npz(models / entry["data"]["test"], shape),
        classes=tuple(entry["classes"]),
        kind=_kind(name, entry),
    )


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, held-out) indices; `fraction` of each class is held out (seeded)."""
    rng = np.random.default_rng([seed, 17])
    held: list[np.ndarray] = []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        held.append(members[: int(round(len(members) * fraction))])
    out = np.zeros(len(y), bool)
    out[np.concatenate(held)] = True
    return np.flatnonzero(~out), np.flatnonzero(out)


def stratified_folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """k disjoint, sorted held-out index sets covering every sample; each class dealt round-robin (seeded)."""
    if k < 2:
        raise ValueError(f"folds: expected an integer >= 2, got {k}")
    rng = np.random.default_rng([seed, 23])
    fold = np.empty(len(y), np.int64)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        fold[members] = (np.arange(len(members)) + rng.integers(k)) % k
    return [np.flatnonzero(fold == f) for f in range(k)]
