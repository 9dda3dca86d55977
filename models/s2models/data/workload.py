"""The shape every workload has: four labelled splits, and how one is written to disk."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Fixed zip timestamp so that the same arrays always give the same .npz bytes.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Split:
    """One labelled split.

    x: float32 (N, F) features (or (N, C, H, W) images for a CNN); y: int64 (N,) class indices;
    group: int64 (N,) the source each row came from (a recording for HAR, an image for
    digits), so tests can check that no source lands in two splits.
    sources: named int64 (N,) arrays written beside x and y in the device files, saying who
    recorded each sample (HAR: `subject`, `recording`), so a fleet can be split by device.
    """

    x: np.ndarray
    y: np.ndarray
    group: np.ndarray
    sources: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.dtype != np.float32 or self.x.ndim < 2:
            raise ValueError(f"Split.x: expected float32 (N, F) or (N, C, H, W), found {self.x.dtype} {self.x.shape}")
        if self.y.dtype != np.int64 or self.y.shape != (len(self.x),):
            raise ValueError(f"Split.y: expected int64 ({len(self.x)},), found {self.y.dtype} {self.y.shape}")
        if self.group.shape != self.y.shape:
            raise ValueError(f"Split.group: expected shape {self.y.shape}, found {self.group.shape}")
        for name, ids in self.sources.items():
            if name in ("x", "y", "labels") or ids.dtype != np.int64 or ids.shape != self.y.shape:
                raise ValueError(f"Split.sources[{name!r}]: expected a new name and int64 {self.y.shape}, found {ids.dtype} {ids.shape}")

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Workload:
    """A workload: pretraining splits (in-domain) and device splits (shifted).

    train/val: the source domain, used for pretraining and early stopping.
    ft/test: the device domain; ft is what the device fine-tunes on, test is held out.
    """

    name: str
    source: str
    labels: tuple[str, ...]
    train: Split
    val: Split
    ft: Split
    test: Split
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.train.x.shape[1])

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in ("train", "val", "ft", "test")}


def save_npz(path: Path, split: Split, labels: tuple[str, ...], named: bool = False) -> None:
    """Write `x` (float32), `y` (int64, or with `named` each sample's label name, unicode),
    `labels` (unicode) and the split's `sources` (int64 each) as a compressed npz.

    Readable with np.load(path, allow_pickle=False); the bytes depend only on the arrays.
    """
    names = np.array(labels, dtype=np.str_)
    arrays = {"x": split.x, "y": names[split.y] if named else split.y, "labels": names, **split.sources}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", _ZIP_EPOCH), buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
