"""Labelled samples, durable in SQLite before the daemon acknowledges them.

A sample belongs to an input signature (input shape, dtype and the class labels), not
to a bundle: a new bundle with the same signature trains on every sample collected so
far; samples of another signature stay in the database, unused, until a bundle with
their signature is deployed again. Nothing is ever deleted.

Classes the bundle lacks (`s2rt serve --allow-new-classes`) are kept per signature in the
`classes` table, in the order they first arrived: the k-th new class of a signature
whose bundle has C labels is class index C + k in `samples.label`. The list only grows,
so a stored label index never changes meaning.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from s2rt.bundle.model import Bundle
from s2rt.errors import StateError
from s2rt.serve.db import Database

log = logging.getLogger(__name__)


def signature(bundle: Bundle) -> str:
    """`float32[48] labels:1a2b…`: samples with equal signatures are interchangeable between bundles."""
    s = bundle.input
    labels = hashlib.sha256("\x1f".join(bundle.labels).encode()).hexdigest()[:16]
    return f"{s.dtype.name.lower()}{list(s.shape)} labels:{labels}"


@dataclass(frozen=True)
class SampleSet:
    ids: np.ndarray  # (N,) int64
    x: np.ndarray  # (N, *input shape)
    y: np.ndarray  # (N,) int64


class SampleStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, sig: str, x: np.ndarray, y: np.ndarray, new_classes: Sequence[str] = (), known: int = 0) -> list[int]:
        """Store samples in one transaction; returns their ids once it is committed (durable).
        `new_classes` are appended to the signature's class list in the same transaction;
        `known` is how many it had when the caller numbered them (StateError if it changed)."""
        now = time.time()
        rows = np.ascontiguousarray(x).reshape(len(x), -1)
        ids = []
        with self.db.transaction() as c:
            if new_classes:
                count = int(c.execute("SELECT COUNT(*) FROM classes WHERE signature = ?", (sig,)).fetchone()[0])
                if count != known:
                    raise StateError(f"the new classes of {sig} changed while the samples were labelled ({known} -> {count})")
                c.executemany(
                    "INSERT INTO classes (signature, position, name, created) VALUES (?, ?, ?, ?)",
                    [(sig, known + k, name, now) for k, name in enumerate(new_classes)],
                )
            for row, label in zip(rows, y):
                cur = c.execute(
                    "INSERT INTO samples (signature, x, label, created) VALUES (?, ?, ?, ?)", (sig, row.tobytes(), int(label), now)
                )
                ids.append(int(cur.lastrowid or 0))
        return ids

    def new_classes(self, sig: str) -> tuple[str, ...]:
        """The classes learned for `sig` beyond its bundle's labels, in class-index order."""
        with self.db.reading() as c:
            rows = c.execute("SELECT name FROM classes WHERE signature = ? ORDER BY position", (sig,)).fetchall()
        return tuple(str(r[0]) for r in rows)

    def count(self, sig: str | None = None) -> int:
        with self.db.reading() as c:
            if sig is None:
                return int(c.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
            return int(c.execute("SELECT COUNT(*) FROM samples WHERE signature = ?", (sig,)).fetchone()[0])

    def summary(self, sig: str, after_id: int, limit: int) -> dict[str, Any]:
        with self.db.reading() as c:
            by_label = dict(c.execute("SELECT label, COUNT(*) FROM samples WHERE signature = ? GROUP BY label", (sig,)).fetchall())
            total = c.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
            ids = [
                r[0]
                for r in c.execute(
                    "SELECT id FROM samples WHERE signature = ? AND id > ? ORDER BY id LIMIT ?", (sig, after_id, limit)
                ).fetchall()
            ]
        return {
            "count": sum(by_label.values()),
            "count_all_signatures": int(total),
            "by_label": {int(k): int(v) for k, v in sorted(by_label.items())},
            "ids": ids,
            "next_after_id": ids[-1] if len(ids) == limit else None,
        }

    def get(self, sample_id: int) -> tuple[str, bytes, int, float] | None:
        with self.db.reading() as c:
            row = c.execute("SELECT signature, x, label, created FROM samples WHERE id = ?", (sample_id,)).fetchone()
        return None if row is None else (row[0], bytes(row[1]), int(row[2]), float(row[3]))

    def load(self, sig: str, shape: tuple[int, ...], dtype: np.dtype, after_id: int = 0) -> SampleSet:
        """Every sample of signature `sig` (with an id above `after_id`), in id order (a consistent snapshot)."""
        with self.db.reading() as c:
            rows = c.execute(
                "SELECT id, x, label FROM samples WHERE signature = ? AND id > ? ORDER BY id", (sig, after_id)
            ).fetchall()
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        good = [r for r in rows if len(r[1]) == size]
        if len(good) != len(rows):  # cannot happen through the API; a hand-edited database could
            log.error("skipping %d samples whose stored size is not %d bytes", len(rows) - len(good), size)
        x = np.frombuffer(b"".join(r[1] for r in good), dtype=dtype).reshape((len(good), *shape))
        return SampleSet(np.array([r[0] for r in good], np.int64), x, np.array([r[2] for r in good], np.int64))
