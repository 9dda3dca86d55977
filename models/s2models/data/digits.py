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

from s2models.data.images import shifted_workload, split_images
from s2models.data.workload import Workload

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


def load(config: DigitsConfig = DigitsConfig()) -> Workload:
    """The digits workload: upright pretraining images, rotated device images."""
    data = load_digits()
    images = data.images / 16.0
    y = data.target
    ids = split_images(y, config)

    def shift(device: np.ndarray) -> np.ndarray:
        return rotate(device, draw_angles(len(device), config))

    return shifted_workload("digits", SOURCE, LABELS, images, y, ids, shift, asdict(config))
