"""The semantic checks that tie a parsed bundle's fields together.

The structural verifier (`verify.py`) makes reading safe; these make *using* the bundle
safe: the head matches the taps, the cache layout is the one the runtime reads, and
every size that later becomes an allocation (the head's B matrices, a cache record) is
bounded, so a well-formed but hostile bundle cannot make the device allocate without
bound when it opens a model.
"""

from __future__ import annotations

import math

import numpy as np

from s2rt.bundle.model import (
    CACHE_TAP_DTYPES,
    KEY_BYTES,
    KEY_FIELD,
    LABEL_FIELD,
    LOGITS_FIELD,
    Bundle,
    CacheField,
    CacheFieldKind,
    DType,
    Loss,
)
from s2rt.errors import BundleError

MAX_RANK = 4096
MAX_OUTPUTS = 1 << 20
MAX_HEAD_B = 1 << 24  # elements of all B matrices together: 64 MiB of float32
MAX_HEAD_A = 1 << 24  # elements of all A matrices the reader generates from a seed (AInitRule)
MAX_ALIGNMENT = 4096


def check_consistency(bundle: Bundle, source: str = "<bundle>") -> None:
    """BundleError naming the field when `bundle`'s parts do not fit together."""
    _Checks(bundle, source).run()


class _Checks:
    def __init__(self, bundle: Bundle, source: str) -> None:
        self.b = bundle
        self.source = source

    def fail(self, message: str) -> BundleError:
        return BundleError(f"{self.source}: contents: {message}")

    def run(self) -> None:
        self.segments()
        self.taps()
        self.input()
        self.head()
        self.cache()

    def segments(self) -> None:
        if not self.b.segments:
            raise self.fail("bundle has no frozen segment")
        for i, s in enumerate(self.b.segments):
            if not len(s.model):
                raise self.fail(f"segments[{i}] ({s.backend.name}) holds an empty model")

    def taps(self) -> None:
        taps = self.b.taps
        if not taps:
            raise self.fail("bundle has no taps")
        names = [t.name for t in taps]
        if len(set(names)) != len(names) or "" in names:
            raise self.fail(f"tap names must be unique and non-empty, got {names}")
        for t in taps:
            if not t.shape or min(t.shape) < 1:
                raise self.fail(f"tap {t.name!r} has shape {t.shape}, expected at least one dimension, all >= 1")

    def input(self) -> None:
        s = self.b.input
        if any(d < 1 for d in s.shape):
            raise self.fail(f"input {s.name!r} has shape {s.shape}, expected dimensions >= 1")
        for what, a in (("mean", s.mean), ("std", s.std)):
            if a is None:
                continue
            try:
                fits = np.broadcast_shapes(a.shape, s.shape) == s.shape
            except ValueError:
                fits = False
            if not fits or a.dtype != np.float32 or not np.isfinite(a).all():
                raise self.fail(f"input.{what} is {a.dtype} {a.shape}, expected finite float32 broadcastable to {s.shape}")
        if s.std is not None and not np.all(s.std != 0):
            raise self.fail("input.std holds a zero")

    def head(self) -> None:
        h, taps = self.b.head, self.b.taps
        if not 1 <= h.rank <= MAX_RANK:
            raise self.fail(f"head.rank is {h.rank}, expected 1..{MAX_RANK}")
        if not 1 <= h.num_outputs <= MAX_OUTPUTS:
            raise self.fail(f"head.num_outputs is {h.num_outputs}, expected 1..{MAX_OUTPUTS}")
        if h.num_outputs * h.rank * len(taps) > MAX_HEAD_B:
            raise self.fail(
                f"head's B matrices would hold {h.num_outputs} x {h.rank} x {len(taps)} numbers, more than this runtime's "
                f"limit of {MAX_HEAD_B:,}"
            )
        if not math.isfinite(h.alpha):
            raise self.fail(f"head.alpha is {h.alpha}")
        d = h.defaults
        if not (math.isfinite(d.learning_rate) and d.learning_rate > 0 and d.epochs >= 1 and d.batch_size >= 1):
            raise self.fail(f"head.defaults {d} need a finite learning rate > 0 and epochs, batch size >= 1")
        if len(h.a_init) != len(taps):
            raise self.fail(f"head.a_init has {len(h.a_init)} matrices for {len(taps)} taps")
        for i, (tap, a) in enumerate(zip(taps, h.a_init)):
            if a.shape != (h.rank, tap.size) or a.dtype != np.float32:
                raise self.fail(f"head.a_init[{i}] is {a.dtype} {a.shape}, expected float32 ({h.rank}, {tap.size}) for tap {tap.name!r}")
            if not np.isfinite(a).all():
                raise self.fail(f"head.a_init[{i}] holds NaN or Inf")
        if h.loss == Loss.SOFTMAX_CROSS_ENTROPY and len(self.b.labels) != h.num_outputs:
            raise self.fail(f"{len(self.b.labels)} labels for {h.num_outputs} outputs")

    def cache(self) -> None:
        c = self.b.cache
        if not 1 <= c.alignment <= MAX_ALIGNMENT or c.alignment & (c.alignment - 1):
            raise self.fail(f"cache.alignment is {c.alignment}, expected a power of two up to {MAX_ALIGNMENT}")
        names = [f.name for f in c.fields]
        if len(set(names)) != len(names):
            raise self.fail(f"cache field names repeat: {names}")
        end = 0
        for f in sorted(c.fields, key=lambda f: f.offset):
            if f.offset < end or not math.isfinite(f.scale):
                raise self.fail(f"cache field {f.name!r} at offset {f.offset} overlaps the field before it or has scale {f.scale}")
            end = f.offset + f.nbytes
        padded = -(-end // c.alignment) * c.alignment
        if c.record_size != padded:
            raise self.fail(f"cache.record_size is {c.record_size}, its fields end at {end}: expected {padded} (alignment {c.alignment})")
        self.fixed_field(KEY_FIELD, CacheFieldKind.KEY, (KEY_BYTES,), DType.UINT8)
        self.fixed_field(LABEL_FIELD, CacheFieldKind.LABEL, (), DType.INT64)
        self.fixed_field(LOGITS_FIELD, CacheFieldKind.LOGITS, (self.b.head.num_outputs,), DType.FLOAT32)
        self.tap_fields()

    def fixed_field(self, name: str, kind: CacheFieldKind, shape: tuple[int, ...], dtype: DType) -> None:
        found = [f for f in self.b.cache.fields if f.kind == kind]
        expected = CacheField(kind, name, found[0].offset if found else 0, shape, dtype)
        if len(found) != 1 or found[0] != expected:
            raise self.fail(f"cache layout needs one {kind.name} field {name!r} of {dtype.name} {shape}, found {found}")

    def tap_fields(self) -> None:
        fields = self.b.cache.taps
        taps = self.b.taps
        if [f.name for f in fields] != [t.name for t in taps]:
            raise self.fail(f"cache layout's tap fields {[f.name for f in fields]} do not match the taps {[t.name for t in taps]}")
        offset, dtype = fields[0].offset, fields[0].dtype
        if dtype not in CACHE_TAP_DTYPES:
            raise self.fail(f"cache tap storage dtype {dtype.name} is not one of {[d.name for d in CACHE_TAP_DTYPES]}")
        for f, tap in zip(fields, taps):
            if f.shape != tap.shape or f.dtype != dtype or f.offset != offset:
                raise self.fail(
                    f"cache field {f.name!r} ({f.dtype.name} {f.shape} at {f.offset}) is not the tap's shape {tap.shape} "
                    f"stored as {dtype.name} right after the previous tap (at {offset})"
                )
            offset += f.nbytes
