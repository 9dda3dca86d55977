"""The Skip-Cache: each sample's frozen activations, computed once and kept.

A cache is one flat array of fixed-size records laid out by the bundle's
`CacheLayout` (key, label, frozen logits, then all taps back to back), behind a
128-byte header. With a path it is a memory-mapped file that survives restarts and
never needs the whole cache in RAM; without one it lives in memory.

Policy when full: samples already cached stay; new samples are not admitted and run
the frozen forward every time they are needed (training stays correct, only slower).

Keys are stable sample ids: `sample_keys` hashes each sample's bytes (BLAKE2b-128), so
the same sample maps to the same record whatever file or order it arrives in.

Integrity: after the records comes one 8-byte checksum per record (BLAKE2b-64 of its
bytes). A file is reopened only if its header matches the bundle and layout; then its
records are checked in order and the cache keeps those before the first bad one (a
crash or power cut may leave records half written), so nothing in it is trusted blindly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from pathlib import Path

import numpy as np

from s2rt.bundle.model import (
    KEY_BYTES,
    KEY_FIELD,
    LABEL_FIELD,
    LOGITS_FIELD,
    CacheLayout,
    DType,
)
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
    keys = np.empty((len(rows), KEY_BYTES), dtype=np.uint8)
    for i, row in enumerate(rows):
        keys[i] = np.frombuffer(hashlib.blake2b(row.tobytes(), digest_size=KEY_BYTES).digest(), dtype=np.uint8)
    return keys


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
        if dtype not in (DType.FLOAT32, DType.FLOAT16):
            raise BundleError(f"cache layout: tap storage dtype {dtype.name} is not supported by this runtime")
        self.tap_dtype = dtype.numpy
        self.tap_offset = taps[0].offset
        self.width = sum(int(np.prod(f.shape)) for f in taps)

    @property
    def nbytes(self) -> int:
        return HEADER_BYTES + self.capacity * (self.layout.record_size + CHECK_BYTES)

    def _open_storage(self) -> np.ndarray:
        if self.path is None:
            storage = np.zeros(self.nbytes, dtype=np.uint8)
            self._write_header(storage, 0)
            return storage
        if self.path.exists() and self._header_matches():
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

    def _write_header(self, storage: np.ndarray, count: int) -> None:
        header = HEADER.pack(
            MAGIC, VERSION, self.layout.alignment, self.layout.record_size, self.capacity, count, self.digest
        )
        storage[: len(header)] = np.frombuffer(header, dtype=np.uint8)

    def _make_views(self) -> None:
        stride = self.layout.record_size
        base = HEADER_BYTES

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
        return np.fromiter((self.index.get(k.tobytes(), -1) for k in keys), dtype=np.int64, count=len(keys))

    def put(self, keys: np.ndarray, taps: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Store samples not yet cached while there is room; returns each one's record (-1: not admitted)."""
        slots = np.full(len(keys), -1, dtype=np.int64)
        count = self.count
        for i, key in enumerate(keys):
            k = key.tobytes()
            slot = self.index.get(k)
            if slot is None and count < self.capacity:
                slot = count
                self.keys[slot] = key
                self.labels[slot] = labels[i]
                self.logits[slot] = logits[i]
                self.taps[slot] = taps[i]
                self.checks[slot] = _checksum(self.records[slot])
                self.index[k] = slot
                count += 1
            if slot is not None:
                slots[i] = slot
        self._write_header(self.storage, count)  # the count moves only after the records are written
        return slots

    def gather(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(X float32, F float32) of the given records."""
        return self.taps[slots].astype(np.float32, copy=False), self.logits[slots]

    def flush(self) -> None:
        if isinstance(self.storage, np.memmap):
            self.storage.flush()

    def close(self) -> None:
        self.flush()
        del self.keys, self.labels, self.logits, self.taps, self.records, self.checks
        self.storage = np.zeros(0, dtype=np.uint8)


def _checksum(record: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(record.tobytes(), digest_size=CHECK_BYTES).digest(), "little")
