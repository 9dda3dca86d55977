"""Adapter state files: the trained A_l, B_l of a bundle's head, written atomically.

Format: an uncompressed `.npz` (no pickle) with arrays `A.<l>`, `B.<l>` per tap and
`meta`, a UTF-8 JSON document stored as a uint8 array: format version, the digest of
the bundle the adapters belong to, rank, alpha, creation time and the caller's metrics.
"""

from __future__ import annotations

import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from s2rt.atomic import atomic_write_bytes
from s2rt.bundle.model import Bundle
from s2rt.errors import StateError
from s2rt.npz import read_npz

STATE_FORMAT = 1
Adapters = list[tuple[np.ndarray, np.ndarray]]


def save_adapters(path: str | os.PathLike[str], adapters: Adapters, bundle: Bundle, **meta: Any) -> None:
    """Write the per-tap (A, B) pairs of `bundle`'s head to `path` (temp file, fsync, rename)."""
    header = {
        "format": STATE_FORMAT,
        "bundle_digest": bundle.digest,
        "rank": bundle.head.rank,
        "alpha": bundle.head.alpha,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **meta,
    }
    arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    for i, (a, b) in enumerate(adapters):
        arrays[f"A.{i}"] = np.ascontiguousarray(a, dtype=np.float32)
        arrays[f"B.{i}"] = np.ascontiguousarray(b, dtype=np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy stubs mistake **arrays for allow_pickle
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_adapters(path: str | os.PathLike[str], bundle: Bundle) -> tuple[Adapters, dict[str, Any]]:
    """Read adapters for `bundle`; StateError if the file is unreadable or belongs to another bundle."""
    p = Path(path)
    if not p.is_file():
        raise StateError(f"{p}: no such adapter file")
    arrays = read_npz(p, StateError, "adapter file")
    meta = _meta(p, arrays)
    if meta.get("bundle_digest") != bundle.digest:
        raise StateError(
            f"{p}: adapters were trained for bundle {str(meta.get('bundle_digest'))[:12]}…, "
            f"this bundle is {bundle.digest[:12]}…; train again or use the matching bundle"
        )
    return _adapters(p, arrays, bundle), meta


def _meta(p: Path, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    raw = arrays.get("meta")
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise StateError(f"{p}: missing or malformed 'meta' record")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StateError(f"{p}: 'meta' record is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise StateError(f"{p}: unknown adapter file format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta


def _adapters(p: Path, arrays: dict[str, np.ndarray], bundle: Bundle) -> Adapters:
    head = bundle.head
    out: Adapters = []
    for i, tap in enumerate(bundle.taps):
        expected = {f"A.{i}": (head.rank, tap.size), f"B.{i}": (head.num_outputs, head.rank)}
        for name, shape in expected.items():
            a = arrays.get(name)
            if a is None:
                raise StateError(f"{p}: missing array {name!r} for tap {tap.name!r}")
            if a.shape != shape or a.dtype != np.float32:
                raise StateError(f"{p}: {name} is {a.dtype} {a.shape}, expected float32 {shape}")
            if not np.isfinite(a).all():
                raise StateError(f"{p}: {name} contains NaN or Inf")
        out.append((arrays[f"A.{i}"], arrays[f"B.{i}"]))
    extra = set(arrays) - {"meta"} - {f"{k}.{i}" for i in range(len(bundle.taps)) for k in "AB"}
    if extra:
        raise StateError(f"{p}: unexpected arrays {sorted(extra)} (adapters for a bundle with more taps?)")
    return out
