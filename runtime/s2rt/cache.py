"""The Skip-Cache: each sample's frozen activations, computed once and kept.

A cache is one flat array of fixed-size records laid out by the bundle's
`CacheLayout` (key, label, frozen logits, then all taps back to back), behind a
128-byte header. With a path it is a memory-mapped file that survives restarts and
never needs the whole cache in RAM; without one it lives in memory. Taps are stored as
float32, float16 or int8; an int8 cache keeps its per-tap scales in a block between the
header and the records (see `s2rt.cache_int8`).

Policy when full: samples already cached stay; new samples are not admitted and run
the frozen forward every time they are needed (training stays correct, only slower).
The capacity is a number of records; `records_within` turns a byte budget into one.

Keys are stable sample ids: `sample_keys` hashes each sample's bytes (BLAKE2b-128), so
the same sample maps to the same record whatever file or order it arrives in.

Integrity: after the records comes one 8-byte checksum per record (BLAKE2b-64 of its
bytes). A file is reopened only if its header matches the bundle and layout; then its
records are checked in order and the cache keeps those before the first bad one (a
crash or power cut may leave records half written), so nothing in it is trusted blindly.
An in-memory cache (no path) cannot be reopened, so it skips the checksums.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from s2rt.bundle.model import (
    CACHE_TAP_DTYPES,
    KEY_BYTES,
    KEY_FIELD,
    LABEL_FIELD,
    LOGITS_FIELD,
    CacheLayout,
    DType,
)
from s2rt.cache_int8 import TapScales, check_scales, scale_block_bytes, scales_usable
from s2rt.errors import BundleError, RuntimeInputError

MAGIC = b"S2LCACHE"
VERSION = 2
HEADER = struct.Struct("<8sIIQQQ32s")  # magic, version, alignment, record size, capacity, count, bundle digest
HEADER_BYTES = 128
CHECK_BYTES = 8  # per-record checksum, stored after all records

log = logging.getLogger(__name__)


def sample_keys(x: np.ndarray) -> np.ndarray:
    """(N, 16) uint8: a content hash of each sample (row of `x`)."""
    rows = np.ascontiguousarray(x).reshape(len(x), -1)
    raw, step = rows.data.cast("B"), rows.shape[1] * rows.itemsize
    blake = hashlib.blake2b  # one digest per row, joined once: half the time of filling a keys array row by row
    digests = b"".join([blake(raw[i : i + step], digest_size=KEY_BYTES).digest() for i in range(0, len(rows) * step, step)])
    return np.frombuffer(digests, dtype=np.uint8).reshape(len(rows), KEY_BYTES).copy()


class SkipCache:
    def __init__(
        self,
        layout: CacheLayout,
        capacity: int,
        path: str | os.PathLike[str] | None = None,
        bundle_digest: str = "",
    ) -> None:
        if capacity < 1:
            raise RuntimeInputError(f"cache capacity must be at least 1 record, got {capacity}")
        self.layout = layout
        self.capacity = capacity
        self.path = Path(path) if path is not None else None
        self.digest = bytes.fromhex(bundle_digest) if bundle_digest else b""
        self._check_layout()
        self.storage = self._open_storage()
        self._make_views()
        if self.path is not None:
            self._drop_bad_records()
        self.index: dict[bytes, int] = {bytes(self.keys[i]): i for i in range(self.count)}

    # -- layout ----------------------------------------------------------------------
    def _check_layout(self) -> None:
        taps = self.layout.taps
        if not taps:
            raise BundleError("cache layout has no tap fields")
        dtype = taps[0].dtype
        offset = taps[0].offset
        for f in taps:
            if f.dtype != dtype or f.offset != offset:
                raise BundleError(
                    f"cache layout: tap field {f.name!r} is not stored right after the previous tap with "
                    f"dtype {dtype.name}; this runtime reads taps as one fused row"
                )
            offset += f.nbytes
        if dtype not in CACHE_TAP_DTYPES:
            raise BundleError(f"cache layout: tap storage dtype {dtype.name} is not supported by this runtime")
        if dtype == DType.INT8:
            check_scales(taps)
        self.scale_bytes = scale_block_bytes(len(taps)) if dtype == DType.INT8 else 0
        self.tap_dtype = dtype.numpy
        self.tap_offset = taps[0].offset
        self.width = sum(int(np.prod(f.shape)) for f in taps)

    @property
    def nbytes(self) -> int:
        return records_offset(self.layout) + self.capacity * (self.layout.record_size + CHECK_BYTES)

    def _open_storage(self) -> np.ndarray:
        if self.path is None:
            storage = np.zeros(self.nbytes, dtype=np.uint8)
            self._write_header(storage, 0)
            return storage
        if self.path.exists() and self._header_matches() and self._stored_scales_usable():
            return np.memmap(self.path, dtype=np.uint8, mode="r+", shape=(self.nbytes,))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "wb") as f:  # a new or mismatched file is rebuilt empty
            f.truncate(self.nbytes)
        storage = np.memmap(self.path, dtype=np.uint8, mode="r+", shape=(self.nbytes,))
        self._write_header(storage, 0)
        return storage

    def _header_matches(self) -> bool:
        assert self.path is not None
        if self.path.stat().st_size != self.nbytes:
            return False
        with open(self.path, "rb") as f:
            raw = f.read(HEADER.size)
        magic, version, alignment, record_size, capacity, count, digest = HEADER.unpack(raw)
        return (
            magic == MAGIC
            and version == VERSION
            and alignment == self.layout.alignment
            and record_size == self.layout.record_size
            and capacity == self.capacity
            and count <= capacity
            and digest == self.digest.ljust(32, b"\0")
        )

    def _stored_scales_usable(self) -> bool:
        if not self.scale_bytes:
            return True
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(HEADER_BYTES)
            stored = np.frombuffer(f.read(4 * len(self.layout.taps)), dtype="<f4")
        return scales_usable(self.layout.taps, stored)

    def _write_header(self, storage: np.ndarray, count: int) -> None:
        header = HEADER.pack(
            MAGIC, VERSION, self.layout.alignment, self.layout.record_size, self.capacity, count, self.digest
        )
        storage[: len(header)] = np.frombuffer(header, dtype=np.uint8)

    def _make_views(self) -> None:
        stride = self.layout.record_size
        base = HEADER_BYTES + self.scale_bytes

        def view(offset: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
            inner = tuple(int(np.prod(shape[i + 1 :], dtype=np.int64)) * dtype.itemsize for i in range(len(shape)))
            return np.ndarray(
                (self.capacity, *shape), dtype=dtype, buffer=self.storage, offset=base + offset, strides=(stride, *inner)
            )

        key = self.layout.field(KEY_FIELD)
        label = self.layout.field(LABEL_FIELD)
        logits = self.layout.field(LOGITS_FIELD)
        self.keys = view(key.offset, key.shape, key.dtype.numpy)
        self.labels = view(label.offset, label.shape, label.dtype.numpy)
        self.logits = view(logits.offset, logits.shape, logits.dtype.numpy)
        self.taps = view(self.tap_offset, (self.width,), self.tap_dtype)
        end = base + self.capacity * stride
        self.records = self.storage[base:end].reshape(self.capacity, stride)
        self.checks = np.ndarray((self.capacity,), dtype="<u8", buffer=self.storage, offset=end)
        self.scales: TapScales | None = None
        if self.scale_bytes:
            stored = np.ndarray((len(self.layout.taps),), dtype="<f4", buffer=self.storage, offset=HEADER_BYTES)
            self.scales = TapScales(self.layout.taps, stored)

    def _drop_bad_records(self) -> None:
        """Keep the records before the first one whose checksum does not match."""
        count = self.count
        for i in range(count):
            if self.checks[i] != _checksum(self.records[i]):
                log.warning("%s: cache record %d of %d fails its checksum; keeping the %d before it", self.path, i, count, i)
                self._write_header(self.storage, i)
                return

    @property
    def count(self) -> int:
        return int(HEADER.unpack(bytes(self.storage[: HEADER.size]))[5])

    # -- use -------------------------------------------------------------------------
    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The record index of each key, or -1 where the sample is not cached."""
        raw, get = np.ascontiguousarray(keys).tobytes(), self.index.get
        return np.fromiter((get(raw[i : i + KEY_BYTES], -1) for i in range(0, len(raw), KEY_BYTES)), dtype=np.int64, count=len(keys))

    def put(self, keys: np.ndarray, taps: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Store samples not yet cached while there is room; returns each one's record (-1: not admitted)."""
        slots = np.full(len(keys), -1, dtype=np.int64)
        first = count = self.count
        stored = self._stored_taps(taps, count) if count < self.capacity else taps
        admitted = []  # rows of the arguments that get the new records first..count-1, in order
        raw = np.ascontiguousarray(keys).tobytes()
        for i in range(len(keys)):
            k = raw[i * KEY_BYTES : (i + 1) * KEY_BYTES]
            slot = self.index.get(k)
            if slot is None and count < self.capacity:
                slot = self.index[k] = count
                admitted.append(i)
                count += 1
            if slot is not None:
                slots[i] = slot
        if admitted:  # new records are consecutive: write each field once for all of them
            rows, new = np.array(admitted), slice(first, count)
            self.keys[new] = keys[rows]
            self.labels[new] = np.asarray(labels)[rows]
            self.logits[new] = logits[rows]
            self.taps[new] = stored[rows]
            if self.path is not None:  # only a file can be reopened after a torn write
                self.checks[new] = _checksums(self.records[new])
        self._write_header(self.storage, count)  # the count moves only after the records are written
        return slots

    def _stored_taps(self, taps: np.ndarray, count: int) -> np.ndarray:
        """`taps` in storage form: as they are for float storage; int8 with the tap scales,
        after growing scales chosen on the device to fit them (see s2rt.cache_int8)."""
        if self.scales is None:
            return taps
        new = self.scales.grown(taps, count)
        if new is not None:
            if count:
                # The stored records are rewritten; none is valid until put() writes the count again.
                self._write_header(self.storage, 0)
                self.flush()
                self.scales.requantize(self.taps[:count], new)
                self.checks[:count] = [_checksum(r) for r in self.records[:count]]
            self.scales.values[:] = new
            self.flush()
        return self.scales.encode(taps)

    def gather(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(X float32, F float32) of the given records."""
        stored = self.taps[slots]
        x = stored.astype(np.float32, copy=False) if self.scales is None else self.scales.decode(stored)
        return x, self.logits[slots]

    def gather_taps(self, slots: np.ndarray, taps: Sequence[tuple[slice, float, np.ndarray]]) -> None:
        """For each (cols, factor, out): factor * the columns `cols` (within one tap) of the given
        records, decoded to float32 straight into `out` (one gather and one multiply per tap)."""
        for cols, factor, out in taps:
            if self.scales is not None:
                factor *= float(self.scales.values[self.scales.tap_of(cols)])
            np.multiply(self.taps[slots, cols], np.float32(factor), out=out, dtype=np.float32)  # NumPy 1 would pick float16

    def flush(self) -> None:
        if isinstance(self.storage, np.memmap):
            self.storage.flush()

    def close(self) -> None:
        self.flush()
        del self.keys, self.labels, self.logits, self.taps, self.records, self.checks
        self.scales = None
        self.storage = np.zeros(0, dtype=np.uint8)


def records_offset(layout: CacheLayout) -> int:
    """Where the records start: after the header and, for int8 taps, the scale block."""
    taps = layout.taps
    int8 = bool(taps) and taps[0].dtype == DType.INT8
    return HEADER_BYTES + (scale_block_bytes(len(taps)) if int8 else 0)


def records_within(layout: CacheLayout, max_bytes: int) -> int:
    """How many records a cache of this layout can hold in `max_bytes` (header and checksums included)."""
    return max(0, (max_bytes - records_offset(layout)) // (layout.record_size + CHECK_BYTES))


def _checksum(record: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(record.tobytes(), digest_size=CHECK_BYTES).digest(), "little")


def _checksums(records: np.ndarray) -> np.ndarray:
    """`_checksum` of each row of a contiguous block of records, without copying the rows."""
    raw, step = np.ascontiguousarray(records).data.cast("B"), records.shape[1]
    blake = hashlib.blake2b
    digests = b"".join([blake(raw[i : i + step], digest_size=CHECK_BYTES).digest() for i in range(0, len(records) * step, step)])
    return np.frombuffer(digests, dtype="<u8")
