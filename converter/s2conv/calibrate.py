"""Calibration data: representative inputs that fix int8 scales at conversion time.

A calibration file is a sample file the runtime can read (`.npz` with an array `x`, or
CSV), in the model's input shape; labels, if any, are ignored. It should look like what
the model sees in the field (a few hundred pretraining samples are typical).

Two things are calibrated from it: the activation scales of the int8 frozen segment
(`s2conv.quantize`) and the per-tap scales of an int8 Skip-Cache (`tap_scales`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from s2rt.backend.onnx import OnnxBackend
from s2rt.bundle.model import InputSignature, Segment, SegmentBackend, Tap
from s2rt.data import load_samples
from s2rt.errors import ConversionError, S2LError

from s2conv.split import LOGITS_OUTPUT

INT8_MAX = 127
CALIBRATION_BATCH = 256


def load_calibration(path: str | Path, signature: InputSignature) -> np.ndarray:
    """The calibration inputs (N, *input shape) of the model's input dtype.

    Raises `ConversionError` naming the file when it cannot be read or does not fit the input.
    """
    try:
        return load_samples(path, signature).x
    except S2LError as e:
        raise ConversionError(f"calibration data: {e}") from None


def batches(x: np.ndarray, size: int = CALIBRATION_BATCH) -> list[np.ndarray]:
    return [x[i : i + size] for i in range(0, len(x), size)]


def tap_scales(segment: bytes, signature: InputSignature, taps: Sequence[Tap], x: np.ndarray) -> tuple[float, ...]:
    """Per-tap int8 storage scale max|tap| / 127 over the calibration inputs.

    Runs the segment the device will run (`segment`, possibly already quantized) through
    the runtime's own onnxruntime backend. A tap that is zero on every input gets scale 1
    (any scale stores zeros exactly).
    """
    backend = OnnxBackend(Segment(SegmentBackend.ONNX, segment, signature.name, LOGITS_OUTPUT), threads=1)
    peak = np.zeros(len(taps), dtype=np.float64)
    for chunk in batches(x):
        outputs = backend.run(chunk)
        for i, tap in enumerate(taps):
            peak[i] = max(peak[i], float(np.max(np.abs(outputs[tap.name]), initial=0.0)))
    if not np.isfinite(peak).all():
        bad = taps[int(np.flatnonzero(~np.isfinite(peak))[0])].name
        raise ConversionError(f"calibration data: tap {bad!r} is not finite on some calibration input")
    return tuple(float(p / INT8_MAX) if p > 0 else 1.0 for p in peak)
