"""Corrupted images in the spirit of CIFAR-10-C, built offline and deterministically.

Ten corruptions in four families (noise, blur, weather, digital), three severities each,
through albumentations (pinned in requirements-dev.txt). Every image is taken to 8 bits,
resized to WORK_SIDE x WORK_SIDE (so one set of severity parameters, CIFAR-sized, serves
the 8x8 digits and the 28x28 MNIST alike), stacked to RGB (the weather effects need three
channels), corrupted, turned back to gray (channel mean) and resized back to its own side
with area interpolation. The same (images, corruption, severity, seed) always gives the
same bytes: albumentations draws from the Compose's own seeded generator, image by image.

The device images are the upright ones of the digits and MNIST workloads' ft and test
splits (s2models.data.images.split_images, the same ids as the shifted workloads): the
reference CNNs saw none of them in pretraining, and the corruption is the only shift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

WORK_SIDE = 32
SEVERITIES = (1, 2, 3)


@dataclass(frozen=True)
class Corruption:
    name: str
    family: str  # noise | blur | weather | digital
    transform: Callable[[int], Any]  # severity (1..3) -> an albumentations transform


def _albumentations() -> Any:
    """albumentations without its update check, which asks PyPI over the network at import."""
    import os

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


def _pick(values: tuple[Any, Any, Any]) -> Callable[[int], Any]:
    return lambda severity: values[severity - 1]


def _corruptions() -> dict[str, Corruption]:
    A = _albumentations()  # noqa: N806 - the library's usual short name

    def c(name: str, family: str, make: Callable[[Any], Any], values: tuple[Any, Any, Any]) -> Corruption:
        level = _pick(values)
        return Corruption(name, family, lambda severity: make(level(severity)))

    table = [
        c("gaussian_noise", "noise", lambda s: A.GaussNoise(std_range=(s, s), p=1), (0.08, 0.16, 0.28)),
        c("impulse_noise", "noise", lambda a: A.SaltAndPepper(amount=(a, a), p=1), (0.03, 0.08, 0.15)),
        c("defocus_blur", "blur", lambda r: A.Defocus(radius=(r, r), alias_blur=(0.1, 0.1), p=1), (1, 2, 3)),
        c("motion_blur", "blur", lambda k: A.MotionBlur(blur_limit=(k, k), p=1), (3, 5, 7)),
        c("zoom_blur", "blur", lambda f: A.ZoomBlur(max_factor=(f, f), step_factor=(0.02, 0.02), p=1), (1.06, 1.11, 1.16)),
        c("fog", "weather", lambda f: A.RandomFog(fog_coef_range=(f, f), alpha_coef=0.1, p=1), (0.3, 0.5, 0.7)),
        c("snow", "weather", lambda s: A.RandomSnow(snow_point_range=(s, s), brightness_coeff=2.0, method="bleach", p=1), (0.1, 0.25, 0.4)),
        c("contrast", "digital", lambda k: A.RandomBrightnessContrast(brightness_limit=0, contrast_limit=(k, k), p=1), (-0.4, -0.6, -0.8)),
        c("jpeg", "digital", lambda q: A.ImageCompression(quality_range=(q, q), p=1), (30, 15, 7)),
        c("pixelate", "digital", lambda s: A.Downscale(scale_range=(s, s), p=1), (0.5, 0.35, 0.25)),
    ]
    return {x.name: x for x in table}


def names() -> list[str]:
    return list(_corruptions())


def family(name: str) -> str:
    return _lookup(name).family


def _lookup(name: str) -> Corruption:
    table = _corruptions()
    if name not in table:
        raise KeyError(f"corruption {name!r}: expected one of {', '.join(table)}")
    return table[name]


def corrupt(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """(N, H, W) images in [0, 1] -> the same shape, float32, corrupted, at 8-bit precision."""
    import cv2

    A = _albumentations()  # noqa: N806

    if severity not in SEVERITIES:
        raise ValueError(f"severity: expected one of {SEVERITIES}, found {severity}")
    if images.ndim != 3:
        raise ValueError(f"images: expected (N, H, W), found shape {images.shape}")
    compose = A.Compose([_lookup(name).transform(severity)], seed=seed)
    side_h, side_w = images.shape[1:]
    out = np.empty(images.shape, np.float32)
    pixels = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    for i, img in enumerate(pixels):
        big = cv2.resize(img, (WORK_SIDE, WORK_SIDE), interpolation=cv2.INTER_LINEAR)
        rgb = compose(image=np.repeat(big[:, :, None], 3, axis=2))["image"]
        gray = rgb.astype(np.float32).mean(axis=2)
        out[i] = cv2.resize(gray, (side_w, side_h), interpolation=cv2.INTER_AREA)
    return np.round(out) / np.float32(255.0)


def seed_of(name: str, severity: int, split: str, seed: int) -> int:
    """A seed per (corruption, severity, split), stable across Python processes (no hash())."""
    digest = sum((i + 1) * ord(ch) for i, ch in enumerate(f"{name}/{split}"))
    return int(np.random.SeedSequence([seed, severity, digest]).generate_state(1)[0])


def mixed_severity(images: np.ndarray, name: str, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Every image at one severity drawn uniformly (seeded): (corrupted images, severities)."""
    severities = np.random.default_rng([seed, 23]).integers(1, len(SEVERITIES) + 1, size=len(images))
    out = np.empty(images.shape, np.float32)
    for s in SEVERITIES:
        rows = np.flatnonzero(severities == s)
        if len(rows):
            out[rows] = corrupt(images[rows], name, int(s), seed_of(name, int(s), split, seed))
    return out, severities


def upright_device_images(source: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """({"ft", "test"}: images in [0, 1], {"ft", "test"}: labels) of a workload's device
    splits before its shift: `source` is "digits" (8x8) or "mnist" (28x28)."""
    loaders: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, Any]]] = {"digits": _digits, "mnist": _mnist}
    if source not in loaders:
        raise KeyError(f"source {source!r}: expected one of {', '.join(loaders)}")
    from s2models.data.images import split_images

    images, y, config = loaders[source]()
    ids = split_images(y, config)
    return {k: images[np.sort(ids[k])] for k in ("ft", "test")}, {k: y[np.sort(ids[k])] for k in ("ft", "test")}


def _digits() -> tuple[np.ndarray, np.ndarray, Any]:
    from sklearn.datasets import load_digits

    from s2models.data.digits import DigitsConfig

    data = load_digits()
    return data.images / 16.0, data.target.astype(np.int64), DigitsConfig()


def _mnist() -> tuple[np.ndarray, np.ndarray, Any]:
    from s2models.data.mnist import MnistConfig, read_images

    images, y = read_images()
    return images, y.astype(np.int64), MnistConfig()
