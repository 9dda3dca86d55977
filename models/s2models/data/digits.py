"""Digits: scikit-learn's 8x8 handwritten digits; the device sees them rotated.

1797 images, pixels scaled to [0, 1] by /16 (no standard scaler: near-constant corner
pixels would blow up). A seeded, class-stratified split gives disjoint image sets:
pretraining train/val (upright) and a device part, each image of which is rotated by a
random angle of 15-30 degrees either way, split into ft and test.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from s2models.data.workload import Split, Workload

SOURCE = "scikit-learn load_digits (8x8 handwritten digits, 1797 images)"
LABELS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class DigitsConfig:
    """How the digits workload is split and shifted."""

    seed: int = 0  # seeds the splits and the rotation angles
    device_fraction: float = 0.4  # share of images that go to the device (rotated)
    val_fraction: float = 0.2  # share of the pretraining images held out for early stopping
    test_fraction: float = 0.5  # share of the device images held out as the shifted test
    min_angle: float = 15.0  # degrees; each device image turns by +-U(min_angle, max_angle)
    max_angle: float = 30.0

    def __post_init__(self) -> None:
        for name in ("device_fraction", "val_fraction", "test_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"DigitsConfig.{name}: expected a value in (0, 1), found {getattr(self, name)}")
        if not 0.0 <= self.min_angle <= self.max_angle:
            raise ValueError(f"DigitsConfig: expected 0 <= min_angle <= max_angle, found {self.min_angle}, {self.max_angle}")


def rotate(images: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotate each (8, 8) image by its angle in degrees, same size, bilinear, zero fill."""
    return np.stack([ndimage.rotate(img, a, reshape=False, order=1) for img, a in zip(images, angles)])


def draw_angles(n: int, config: DigitsConfig) -> np.ndarray:
    rng = np.random.default_rng([config.seed, 1])
    sign = rng.choice([-1.0, 1.0], size=n)
    return sign * rng.uniform(config.min_angle, config.max_angle, size=n)


def to_split(images: np.ndarray, y: np.ndarray, ids: np.ndarray) -> Split:
    ids = np.sort(ids)
    return Split(images[ids].reshape(len(ids), -1).astype(np.float32), y[ids].astype(np.int64), ids.astype(np.int64))


def split_images(y: np.ndarray, config: DigitsConfig) -> dict[str, np.ndarray]:
    """Image ids of each split, every split stratified by class."""
    seed = config.seed
    ids = np.arange(len(y))
    pretrain, device = train_test_split(ids, test_size=config.device_fraction, stratify=y, random_state=seed)
    train, val = train_test_split(pretrain, test_size=config.val_fraction, stratify=y[pretrain], random_state=seed)
    ft, test = train_test_split(device, test_size=config.test_fraction, stratify=y[device], random_state=seed)
    return {"train": train, "val": val, "ft": ft, "test": test}


def load(config: DigitsConfig = DigitsConfig()) -> Workload:
    """The digits workload: upright pretraining images, rotated device images."""
    data = load_digits()
    images = data.images / 16.0
    y = data.target
    ids = split_images(y, config)
    device = np.sort(np.concatenate([ids["ft"], ids["test"]]))
    shifted = images.copy()
    shifted[device] = rotate(images[device], draw_angles(len(device), config))
    return Workload(
        name="digits",
        source=SOURCE,
        labels=LABELS,
        train=to_split(images, y, ids["train"]),
        val=to_split(images, y, ids["val"]),
        ft=to_split(shifted, y, ids["ft"]),
        test=to_split(shifted, y, ids["test"]),
        config=asdict(config),
    )
