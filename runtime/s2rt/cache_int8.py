"""int8 storage of cached taps: one scale per tap, value = scale * stored, stored in -127..127.

Where a tap's scale comes from:

- **Calibrated** (the bundle's `CacheField.scale` > 0): `s2conv --cache-dtype int8 --calib
  FILE` sets it to max|tap| / 127 over the calibration inputs. It is fixed; a value
  beyond 127 * scale is clipped.
- **On the device** (the bundle says `SCALE_ON_DEVICE`, 0): the scale is max|tap| / 127
  over the activations cached so far, that is, the first epoch's, since a sample is
  cached when it is first seen. When a later sample exceeds it the scale grows to fit and
  the records already stored are requantized to it, so nothing is clipped; the running
  maximum settles within the first few batches, so this is rare.

The scales live in the cache's own storage, in a block between the header and the
records (`scale_block_bytes`), so a cache file reopened later decodes its records with
the scales they were written with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from s2rt.bundle.model import CacheField
from s2rt.errors import BundleError

INT8_LIMIT = 127
SCALE_BLOCK_ALIGNMENT = 128


def scale_block_bytes(num_taps: int) -> int:
    """Bytes of the scale block: one float32 per tap, padded to a multiple of 128."""
    return -(-4 * num_taps // SCALE_BLOCK_ALIGNMENT) * SCALE_BLOCK_ALIGNMENT


def check_scales(taps: Sequence[CacheField]) -> None:
    """A BundleError unless every scale is finite and >= 0 and either all or none are set (> 0)."""
    for f in taps:
        if not (math.isfinite(f.scale) and f.scale >= 0):
            raise BundleError(f"cache layout: int8 tap field {f.name!r} has scale {f.scale}, expected a finite number >= 0")
    if len({f.scale > 0 for f in taps}) > 1:
        raise BundleError("cache layout: int8 tap fields mix calibrated scales (> 0) and scales chosen on the device (0)")


def scales_usable(taps: Sequence[CacheField], stored: np.ndarray) -> bool:
    """Whether scales read back from a cache file belong to this layout: the calibrated
    ones exactly, or any finite scales >= 0 when they are chosen on the device."""
    calibrated = np.array([f.scale for f in taps], dtype=np.float32)
    if (calibrated > 0).all():
        return bool(np.array_equal(stored, calibrated))
    return bool(np.isfinite(stored).all() and (stored >= 0).all())


class TapScales:
    """The per-tap scales of an int8 cache, kept in `values` (a float32 view into the cache storage)."""

    def __init__(self, taps: Sequence[CacheField], values: np.ndarray) -> None:
        self.layout_scales = np.array([f.scale for f in taps], dtype=np.float32)
        self.fixed = bool((self.layout_scales > 0).all())
        self.values = values
        widths = [math.prod(f.shape) for f in taps]
        bounds = np.cumsum([0, *widths])
        self.columns = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self.widths = np.array(widths)
        if self.fixed:
            values[:] = self.layout_scales

    def tap_of(self, cols: slice) -> int:
        """The tap whose columns hold `cols` (a slice of the fused row)."""
        for t, own in enumerate(self.columns):
            if own.start <= cols.start and cols.stop <= own.stop:
                return t
        raise ValueError(f"columns {cols.start}:{cols.stop} span more than one tap")

    # -- scale growth (scales chosen on the device) ----------------------------------------
    def grown(self, x: np.ndarray, count: int) -> np.ndarray | None:
        """New scales if the fused tap rows `x` exceed the current ones (None: they fit).

        With no record stored yet (`count` 0) the scales start afresh from `x`.
        """
        if self.fixed or not len(x):
            return None
        peak = np.array([np.max(np.abs(x[:, cols]), initial=0.0) for cols in self.columns], dtype=np.float32)
        needed = peak / np.float32(INT8_LIMIT)
        current = self.values if count else np.zeros_like(self.values)
        if (needed <= current).all() and count:
            return None
        return np.maximum(needed, current)

    def requantize(self, stored: np.ndarray, new: np.ndarray) -> None:
        """Re-express `stored` (int8 rows of fused taps) in the scales `new` (>= the current ones), in place."""
        for t, cols in enumerate(self.columns):
            old = float(self.values[t])
            if old > 0 and new[t] != old:
                rescaled = stored[:, cols].astype(np.float32) * np.float32(old / float(new[t]))
                stored[:, cols] = np.clip(np.rint(rescaled), -INT8_LIMIT, INT8_LIMIT)

    # -- encode / decode ---------------------------------------------------------------
    def encode(self, x: np.ndarray) -> np.ndarray:
        """Fused float tap rows to int8 (a tap with scale 0 is all zeros and stores 0)."""
        scale = np.repeat(self.values, self.widths)
        inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
        return np.clip(np.rint(x * inverse), -INT8_LIMIT, INT8_LIMIT).astype(np.int8)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """int8 rows of fused taps back to float32: value = scale * stored, per tap."""
        return stored.astype(np.float32) * np.repeat(self.values, self.widths)
