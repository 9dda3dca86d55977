"""Adapter versions of one bundle in a state directory: numbered files and an atomic index.

    DIR/<bundle digest[:16]>/
        index.json        {"bundle_digest": ..., "active": 3, "history": [0, 2, 3]}
        v000001.npz ...   one file per version, written by `state.save_state`

A version holds any fine-tuning method's head (`state.HeadState`; the file's meta names
the method), so the daemon serves whichever method the active version has. Version 0 is
the bundle's own initial skip2lora head (random A, B = 0) and has no file. A version
file is complete on disk before the index may name it, and both are replaced atomically
(temp file, fsync, rename), so a crash at any instant leaves an index that points at a
complete file. `history` lists activations, latest last: rolling back re-activates the
one before. A version that fails to load (`StateError`: truncated, corrupt, another
bundle's) is skipped in favour of the one activated before it, and logged.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s2rt.atomic import atomic_write_bytes
from s2rt.bundle.model import Bundle
from s2rt.errors import StateError
from s2rt.methods import DEFAULT_METHOD
from s2rt.state import HeadState, load_head_state

log = logging.getLogger(__name__)

INDEX = "index.json"
HISTORY_LIMIT = 256
_VERSION_FILE = re.compile(r"^v(\d{6,})\.npz$")


class UnknownVersionError(StateError):
    """No adapter version with this number exists for the bundle."""


@dataclass(frozen=True)
class VersionInfo:
    number: int
    created_utc: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # why the version cannot be loaded, None when it can

    def describe(self, active: int) -> dict[str, Any]:
        return {
            "version": self.number,
            "active": self.number == active,
            "created_utc": self.created_utc,
            "metrics": self.meta.get("metrics", {}),
            "job": self.meta.get("job"),
            "parent": self.meta.get("parent"),
            "origin": self.meta.get("origin"),
            "fleet_round": self.meta.get("fleet_round"),
            "method": self.meta.get("method", DEFAULT_METHOD),
            "new_labels": list(self.meta.get("new_labels", [])),
            "online": self.meta.get("online"),
            "loadable": self.error is None,
            "error": self.error,
        }


class AdapterStore:
    """The versions of one bundle's adapters. Thread-safe; every change is durable before it returns."""

    def __init__(self, root: Path, bundle: Bundle) -> None:
        self.bundle = bundle
        self.dir = Path(root) / bundle.digest[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._remove_temp_files()
        self._versions: dict[int, VersionInfo] = {0: VersionInfo(0, meta={"metrics": {}, "origin": "bundle initial head"})}
        for path in sorted(self.dir.glob("v*.npz")):
            match = _VERSION_FILE.match(path.name)
            if match:
                self._versions[int(match.group(1))] = self._inspect(int(match.group(1)), path)
        self._index_damaged = False
        self.active, self.history = self._read_index()

    # -- reading ---------------------------------------------------------------------
    def path(self, number: int) -> Path:
        return self.dir / f"v{number:06d}.npz"

    def versions(self) -> list[VersionInfo]:
        with self._lock:
            return [self._versions[n] for n in sorted(self._versions)]

    def info(self, number: int) -> VersionInfo:
        with self._lock:
            if number not in self._versions:
                known = ", ".join(str(n) for n in sorted(self._versions))
                raise UnknownVersionError(f"adapter version {number} does not exist (versions: {known})")
            return self._versions[number]

    def load(self, number: int) -> HeadState:
        """The method and arrays of a version; StateError if its file is unreadable."""
        self.info(number)
        if number == 0:
            return self.initial()
        state, _ = load_head_state(self.path(number), self.bundle)
        return state

    def initial(self) -> HeadState:
        h = self.bundle.head
        return HeadState.skip2lora([(a.copy(), np.zeros((h.num_outputs, h.rank), np.float32)) for a in h.a_init])

    def load_active(self) -> tuple[int, HeadState]:
        """The active version, or if it cannot be loaded the latest loadable one activated before it."""
        with self._lock:
            for pos in range(len(self.history) - 1, -1, -1):
                number = self.history[pos]
                try:
                    adapters = self.load(number)
                except StateError as e:
                    log.error("adapter version %d cannot be loaded, falling back to the previous one: %s", number, e)
                    self._mark_bad(number, str(e))
                    continue
                if number != self.active or self._index_damaged:
                    self._write_index(number, self.history[: pos + 1])
                return number, adapters
            self._write_index(0, [0])
            return 0, self.initial()

    # -- changing --------------------------------------------------------------------
    def commit(self, state: HeadState, **meta: Any) -> int:
        """Write `state` as a new version (not yet active) and return its number."""
        with self._lock:
            number = max(self._versions) + 1
            state.save(self.path(number), self.bundle, version=number, **meta)
            self._versions[number] = self._inspect(number, self.path(number))
            log.info("adapter version %d written", number)
            return number

    def activate(self, number: int) -> HeadState:
        """Make `number` the active version; it is loaded and checked first, so a bad file never becomes active."""
        with self._lock:
            adapters = self.load(number)
            self._write_index(number, [*self.history, number][-HISTORY_LIMIT:])
            log.info("adapter version %d activated", number)
            return adapters

    def rollback(self) -> tuple[int, HeadState]:
        """Re-activate the version activated before the current one (skipping unloadable ones)."""
        with self._lock:
            history = list(self.history)
            while len(history) > 1:
                history.pop()
                number = history[-1]
                try:
                    adapters = self.load(number)
                except StateError as e:
                    log.error("rollback skips adapter version %d: %s", number, e)
                    continue
                self._write_index(number, history)
                log.info("rolled back to adapter version %d", number)
                return number, adapters
            raise StateError(f"nothing to roll back to: version {self.active} is the only one activated so far")

    # -- internals -------------------------------------------------------------------
    def _inspect(self, number: int, path: Path) -> VersionInfo:
        try:
            _, meta = load_head_state(path, self.bundle)
        except StateError as e:
            log.error("adapter version %d is unreadable: %s", number, e)
            return VersionInfo(number, error=str(e))
        return VersionInfo(number, meta.get("created_utc"), meta)

    def _mark_bad(self, number: int, error: str) -> None:
        if number in self._versions:
            old = self._versions[number]
            self._versions[number] = VersionInfo(number, old.created_utc, old.meta, error)

    def _read_index(self) -> tuple[int, list[int]]:
        path = self.dir / INDEX
        if not path.exists():
            return 0, [0]
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            history = [int(n) for n in index["history"]]
            active = int(index["active"])
            if index.get("bundle_digest") != self.bundle.digest or not history or history[-1] != active:
                raise ValueError("index does not match this bundle")
        except (OSError, ValueError, KeyError, TypeError) as e:
            # The index is only ever replaced atomically, so this is outside damage: start from the newest loadable file.
            log.error("%s is unreadable (%s); activating the newest loadable version", path, e)
            self._index_damaged = True
            return self._newest_loadable()
        return active, history

    def _newest_loadable(self) -> tuple[int, list[int]]:
        good = [n for n, v in sorted(self._versions.items()) if v.error is None]
        return good[-1], good[-2:] if len(good) > 1 else good

    def _write_index(self, active: int, history: list[int]) -> None:
        index = {"bundle_digest": self.bundle.digest, "active": active, "history": history}
        atomic_write_bytes(self.dir / INDEX, json.dumps(index).encode())
        self.active, self.history, self._index_damaged = active, history, False

    def _remove_temp_files(self) -> None:
        for tmp in self.dir.glob(".*.tmp"):  # left by a crash inside atomic_write_bytes
            tmp.unlink(missing_ok=True)
