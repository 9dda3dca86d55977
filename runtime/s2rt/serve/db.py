"""The daemon's SQLite database: labelled samples and the record of fine-tune jobs.

WAL journal with `synchronous=FULL`: a transaction is on disk (the WAL fsynced) when
its COMMIT returns, which is before the daemon answers 2xx, so an acknowledged sample
survives `kill -9` and a power cut. One connection, used under a lock: SQLite
serialises writers anyway, and the daemon's reads are short.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from s2rt.errors import StateError

SCHEMA_VERSION = 2  # 2: the classes table (labels learned on the device, s2rt serve --allow-new-classes)
SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    signature TEXT NOT NULL,
    x BLOB NOT NULL,
    label INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_by_signature ON samples (signature, id);
CREATE TABLE IF NOT EXISTS classes (
    signature TEXT NOT NULL,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (signature, position),
    UNIQUE (signature, name)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bundle_digest TEXT NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL
);
"""


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        try:
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
            self._prepare()
        except sqlite3.DatabaseError as e:
            raise StateError(f"{path}: cannot open the sample database: {e}") from None

    def _prepare(self) -> None:
        c = self.conn
        version = c.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(f"{self.path}: database schema {version} is newer than this s2rt ({SCHEMA_VERSION}); upgrade s2rt")
        mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StateError(f"{self.path}: cannot switch the database to WAL mode (got {mode!r})")
        c.execute("PRAGMA synchronous=FULL")
        check = c.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StateError(f"{self.path}: the sample database is damaged ({check}); restore it from a backup")
        c.executescript(SCHEMA)
        c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT under the lock; durable when the block exits normally."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                if self.conn.in_transaction:  # SQLite has already rolled back after e.g. SQLITE_FULL
                    self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            yield self.conn

    def close(self) -> None:
        with self.lock:
            self.conn.close()
