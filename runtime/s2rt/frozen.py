"""The frozen part of the network: inputs in, fused tap row X and frozen logits F out."""

from __future__ import annotations

import numpy as np

from s2rt.backend import Backend
from s2rt.bundle.model import Bundle
from s2rt.errors import BackendError, RuntimeInputError


class FrozenModel:
    def __init__(self, bundle: Bundle, backend: Backend) -> None:
        self.bundle = bundle
        self.backend = backend
        segment = next(s for s in bundle.segments if s.backend.name.lower() == backend.name)
        self.segment = segment
        self.logits_name = segment.logits_output
        self.tap_names = [t.name for t in bundle.taps]
        self.sample_shape = bundle.input.shape
        self.input_dtype = bundle.input.dtype.numpy
        self.num_outputs = bundle.head.num_outputs

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """A (N, *input shape) array of the input dtype, or RuntimeInputError saying what is wrong."""
        x = np.asarray(x)
        if x.shape[1:] != self.sample_shape:
            raise RuntimeInputError(
                f"input {self.bundle.input.name!r}: expected samples of shape {self.sample_shape}, "
                f"got a batch of shape {x.shape}"
            )
        if x.dtype.kind not in "fiu":
            raise RuntimeInputError(f"input {self.bundle.input.name!r}: expected numbers, got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        # isfinite().all() rather than one float64 sum: the sum's cast costs 2-4x more from a
        # few thousand values on (64 x 561: 13.6 against 3.8 us; 64 x 784: 18.7 against 9.2;
        # HAR's 64 x 48: 1.9 against 1.2), ~0.1 us less for one small sample
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1))[0])
            raise RuntimeInputError(f"input {self.bundle.input.name!r}: sample {bad} contains NaN or Inf")
        return x

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (X, F): the fused taps (N x D float32) and the frozen logits (N x C float32)."""
        return self.run_checked(self.check_input(x))

    def run_checked(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`run` on a batch that `check_input` returned."""
        signature = self.bundle.input
        if signature.mean is not None and signature.std is not None:
            x = ((x - signature.mean) / signature.std).astype(self.input_dtype)
        outputs = self.backend.run(x)
        try:
            taps = [outputs[name].reshape(len(x), -1) for name in self.tap_names]
            logits = outputs[self.logits_name].reshape(len(x), -1)
        except KeyError as e:
            raise BackendError(f"the frozen segment has no output named {e.args[0]!r}") from None
        fused = np.concatenate(taps, axis=1, dtype=np.float32) if len(taps) > 1 else taps[0].astype(np.float32)
        return fused, logits.astype(np.float32, copy=False)
