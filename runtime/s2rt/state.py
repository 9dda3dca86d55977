"""Adapter state files: the trained A_l, B_l of a bundle's head, written atomically.

Format: an uncompressed `.npz` (no pickle) with arrays `A.<l>`, `B.<l>` per tap and
`meta`, a UTF-8 JSON document stored as a uint8 array: format version, the digest of
the bundle the adapters belong to, rank, alpha, the fine-tuning method, creation time
and the caller's metrics. Other methods (`s2rt.methods`) store their own arrays (`A`
and `B` for lora-last, `dW` and `db` for ft-last, `db` for ft-bias); a file without a
method is skip2lora's. A file is only loaded by a method of its family. A skip2lora
file that learned classes the bundle lacks (`s2rt.heads.grown`) lists them in the meta's
`new_labels`, has B with C + K rows and the new rows `new.W`, `new.b`.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from s2rt.atomic import atomic_write_bytes
from s2rt.bundle.model import Bundle
from s2rt.errors import StateError
from s2rt.head import AdapterHead
from s2rt.heads.grown import check_new_labels, grow
from s2rt.methods import DEFAULT_METHOD, METHODS, TrainableHead, get_method
from s2rt.npz import read_npz

STATE_FORMAT = 2  # 2: a `digest` member, the SHA-256 of every other member, checked on load
DIGEST = "digest"
Adapters = list[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class HeadState:
    """What an adapter version holds: a fine-tuning method and its head's named arrays (`head.state_dict()`),
    and the classes it learned beyond the bundle's (`new_labels`: a grown skip2lora head, `s2rt.heads.grown`)."""

    method: str
    arrays: Mapping[str, np.ndarray]
    new_labels: tuple[str, ...] = ()

    @classmethod
    def of(cls, method: str, head: TrainableHead, new_labels: tuple[str, ...] = ()) -> HeadState:
        """A copy of `head`'s numbers (`state_dict` copies)."""
        return cls(get_method(method).name, head.state_dict(), tuple(new_labels))

    @classmethod
    def skip2lora(cls, adapters: Adapters) -> HeadState:
        return cls(DEFAULT_METHOD, {f"{name}.{i}": a for i, pair in enumerate(adapters) for name, a in zip("AB", pair)})

    def head(self, bundle: Bundle) -> TrainableHead:
        """A new head of this method for `bundle` holding these numbers; StateError if they do not fit it."""
        head = get_method(self.method).make_head(bundle)
        if self.new_labels:
            if not isinstance(head, AdapterHead):
                raise StateError(f"{self.method} state cannot hold new classes {list(self.new_labels)[:5]}; only skip2lora grows")
            head = grow(head, bundle.head.num_outputs, len(self.new_labels))
        head.load_state_dict(self.arrays)
        return head

    def adapters(self) -> Adapters:
        """The per-tap (A, B) pairs of a skip2lora-family state."""
        if METHODS[self.method].family != DEFAULT_METHOD or self.new_labels:
            raise StateError(f"{self.method} state{' with new classes' if self.new_labels else ''} has no per-tap (A, B) adapters")
        taps = len(self.arrays) // 2
        return [(self.arrays[f"A.{i}"], self.arrays[f"B.{i}"]) for i in range(taps)]

    def save(self, path: str | os.PathLike[str], bundle: Bundle, **meta: Any) -> None:
        if self.new_labels:
            meta["new_labels"] = list(self.new_labels)
        save_state(path, self.arrays, bundle, self.method, **meta)


def load_head_state(path: str | os.PathLike[str], bundle: Bundle) -> tuple[HeadState, dict[str, Any]]:
    """Read a state file of any method for `bundle`, checked by loading it into a head of its method;
    StateError if it is unreadable, belongs to another bundle or does not fit the bundle's head."""
    arrays, meta = load_state(path, bundle)
    new_labels = () if "new_labels" not in meta else check_new_labels(meta["new_labels"], bundle.labels, f"{path}: new_labels")
    state = HeadState(meta["method"], arrays, new_labels)
    try:
        state.head(bundle)
    except StateError as e:
        raise StateError(f"{path}: {e}") from None
    return state, meta


def save_adapters(path: str | os.PathLike[str], adapters: Adapters, bundle: Bundle, **meta: Any) -> None:
    """Write the per-tap (A, B) pairs of `bundle`'s skip2lora head to `path` (temp file, fsync, rename)."""
    arrays = {f"{name}.{i}": array for i, pair in enumerate(adapters) for name, array in zip("AB", pair)}
    save_state(path, arrays, bundle, DEFAULT_METHOD, **meta)


def save_state(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], bundle: Bundle, method: str, **meta: Any) -> None:
    """Write a head's named arrays (`head.state_dict()`) of fine-tuning `method` to `path`, atomically."""
    header = {
        "format": STATE_FORMAT,
        "bundle_digest": bundle.digest,
        "method": get_method(method).name,
        "rank": bundle.head.rank,
        "alpha": bundle.head.alpha,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **meta,
    }
    stored: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    stored |= {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in arrays.items()}
    stored[DIGEST] = _digest(stored)
    buffer = io.BytesIO()
    np.savez(buffer, **stored)  # type: ignore[arg-type]  # numpy stubs mistake **arrays for allow_pickle
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_adapters(path: str | os.PathLike[str], bundle: Bundle) -> tuple[Adapters, dict[str, Any]]:
    """Read skip2lora adapters for `bundle`; StateError if the file is unreadable, belongs
    to another bundle or holds another method's state."""
    arrays, meta = load_state(path, bundle, DEFAULT_METHOD)
    if "new_labels" in meta:
        raise StateError(
            f"{path}: the adapters add classes {list(meta['new_labels'])[:5]} the bundle does not have; "
            "their head has more outputs than the bundle's (per-tap A, B) form: use them with s2rt (train, eval, "
            "predict, serve, Model.open(..., adapters=...)) or s2conv export"
        )
    return _adapters(Path(path), arrays, bundle), meta


def load_state(path: str | os.PathLike[str], bundle: Bundle, method: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a state file for `bundle`: its arrays (without `meta`) and its meta, whose
    "method" is always set. With `method`, refuse a file of another method family;
    the caller's head checks the arrays' names and shapes."""
    p = Path(path)
    if not p.is_file():
        raise StateError(f"{p}: no such adapter file")
    arrays = read_npz(p, StateError, "adapter file")
    _check_digest(p, arrays)
    meta = _meta(p, arrays)
    if meta.get("bundle_digest") != bundle.digest:
        raise StateError(
            f"{p}: adapters were trained for bundle {str(meta.get('bundle_digest'))[:12]}…, "
            f"this bundle is {bundle.digest[:12]}…; train again or use the matching bundle"
        )
    stored = meta.setdefault("method", DEFAULT_METHOD)
    if stored not in METHODS:
        raise StateError(f"{p}: written by an unknown fine-tuning method {stored!r}; known: {', '.join(METHODS)}")
    if method is not None and get_method(method).family != METHODS[stored].family:
        raise StateError(
            f"{p}: holds {stored} state, which --method {method} cannot load; train again with --method {method} "
            f"or use the file with --method {stored}"
        )
    return {name: a for name, a in arrays.items() if name not in ("meta", DIGEST)}, meta


def _digest(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """SHA-256 over every member but the digest, in name order: its name, dtype, shape and bytes."""
    h = hashlib.sha256(b"s2l adapter state\x00")
    for name in sorted(arrays):
        if name == DIGEST:
            continue
        a = np.ascontiguousarray(arrays[name])
        header = json.dumps([name, a.dtype.str, list(a.shape)]).encode()
        h.update(len(header).to_bytes(8, "little") + header)
        h.update(a.tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8)


def _check_digest(p: Path, arrays: Mapping[str, np.ndarray]) -> None:
    stored = arrays.get(DIGEST)
    if stored is None:
        raise StateError(f"{p}: has no digest: not an adapter file, or one of an older s2rt (format 1); train again")
    if stored.dtype != np.uint8 or stored.shape != (32,) or not hmac.compare_digest(stored.tobytes(), _digest(arrays).tobytes()):
        raise StateError(f"{p}: digest mismatch: the adapter file is corrupt (its arrays or meta changed after it was written)")


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
