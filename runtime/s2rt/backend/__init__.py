"""Inference backends that run a bundle's frozen segment.

A backend turns a batch of inputs into a dict of named outputs; it knows nothing of
taps or heads. `open_backend` picks one by name ("auto" takes the first the bundle has
and the device has installed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from s2rt.bundle.model import Bundle, Segment, SegmentBackend
from s2rt.errors import BackendError


class Backend(Protocol):
    name: str
    threads: int

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run the segment on a batch; returns every segment output by name."""
        ...


def _open_onnx(segment: Segment, threads: int) -> Backend:
    from s2rt.backend.onnx import OnnxBackend

    return OnnxBackend(segment, threads)


def _open_litert(segment: Segment, threads: int) -> Backend:
    from s2rt.backend.litert import LiteRTBackend

    return LiteRTBackend(segment, threads)


# backend name -> (segment kind it runs, factory); "auto" tries them in this order
BACKENDS: dict[str, tuple[SegmentBackend, Callable[[Segment, int], Backend]]] = {
    "onnx": (SegmentBackend.ONNX, _open_onnx),
    "tflite": (SegmentBackend.TFLITE, _open_litert),
}


def open_backend(bundle: Bundle, name: str = "auto", threads: int = 1) -> Backend:
    """Open the backend `name` ("auto" or a key of BACKENDS) on the bundle's matching segment."""
    if name != "auto" and name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose auto or one of: {', '.join(BACKENDS)}")
    if threads < 1:
        raise BackendError(f"threads must be at least 1, got {threads}")
    candidates = list(BACKENDS) if name == "auto" else [name]
    have = {s.backend for s in bundle.segments}
    problems = []
    for candidate in candidates:
        kind, factory = BACKENDS[candidate]
        if kind not in have:
            problems.append(f"{candidate}: the bundle has no {kind.name} segment")
            continue
        try:
            return factory(bundle.segment(kind), threads)
        except ImportError as e:
            problems.append(f"{candidate}: not installed ({e.name})")
    raise BackendError("no usable backend: " + "; ".join(problems))
