"""Which bundle the daemon serves: verified copies under DIR/bundles and a pointer, DIR/deploy.json.

    {"current": <digest>, "previous": <digest>,
     "given": <digest of the bundle named on the command line>, "given_sha256": <SHA-256 of that whole file>}

A bundle (from the command line or an upload) is parsed and verified before it is
copied in; the copy is written atomically before the pointer moves, so a crash leaves
the old bundle or the new one in service, never a half-written file. Restarting on the
bundle file the daemon was last started on keeps a bundle uploaded since (the upload is
newer); restarting on a different file deploys that file.

A file is more than its body digest: `s2conv sign` keeps the digest and adds a
signature to the envelope. So the command-line file is recognised by the SHA-256 of all
its bytes, and of two copies of one body the signed one is kept (`better_copy`): a
daemon restarted with `--trusted-key` on the signed file serves it, never its own
older unsigned copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from s2rt.atomic import atomic_write_bytes
from s2rt.bundle import Bundle
from s2rt.bundle.reader import read_bundle_bytes
from s2rt.errors import BundleError, StateError
from s2rt.trust import TrustedKeys, open_trusted

log = logging.getLogger(__name__)

Copy = tuple[bytes, Bundle]  # a bundle file's bytes and the bundle read from them


class BundleShelf:
    def __init__(self, root: Path, trusted_keys: TrustedKeys = ()) -> None:
        self.trusted_keys = trusted_keys  # re-checked at every start: a key no longer trusted stops its bundles
        self.dir = root / "bundles"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pointer_path = root / "deploy.json"

    def path(self, digest: str) -> Path:
        return self.dir / f"{digest}.s2l"

    def pointer(self) -> dict[str, Any]:
        if not self.pointer_path.exists():
            return {}
        try:
            pointer = json.loads(self.pointer_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise StateError(f"{self.pointer_path}: unreadable ({e}); restart on a bundle file to replace it") from None
        return pointer if isinstance(pointer, dict) else {}

    def startup(self, given: Path | None) -> Copy:
        """The bundle to serve at start: `given` if it is a new file to this state dir, else the current deployment."""
        pointer = self.pointer()
        current = pointer.get("current")
        named = self._read_given(given, current)
        if named is not None and (not current or _new_file(pointer, named)):
            return self.install(named, from_command_line=True)
        if not current:
            raise StateError(f"{self.pointer_path.parent}: no bundle deployed yet; start with `s2rt serve BUNDLE --state-dir ...`")
        try:
            stored = read_verified(self.path(current), self.trusted_keys)
        except BundleError as e:
            if named is None:
                raise
            log.error("cannot serve the deployed bundle %s (%s); serving %s, named on the command line", current[:12], e, given)
            return self.install(named, from_command_line=True)
        if named is not None and named[1].digest == current and better_copy(named[1], stored[1]):
            log.info("%s is a signed copy of the deployed bundle %s; serving it", given, current[:12])
            return self.install(named, from_command_line=True)
        return stored

    def _read_given(self, given: Path | None, current: str | None) -> Copy | None:
        if given is None:
            return None
        try:
            return read_verified(given, self.trusted_keys)
        except BundleError as e:
            if not current:
                raise
            log.error("cannot use %s (%s); serving the bundle deployed before, %s", given, e, current[:12])
            return None

    def install(self, copy: Copy, *, from_command_line: bool = False) -> Copy:
        """Make `copy` (already verified) the deployed bundle, durably; replaces a stored copy of the same body."""
        data, bundle = copy
        pointer = self.pointer()
        atomic_write_bytes(self.path(bundle.digest), data)
        previous = pointer.get("current")
        new = {
            "current": bundle.digest,
            "previous": previous if previous != bundle.digest else pointer.get("previous"),
            "given": bundle.digest if from_command_line else pointer.get("given"),
            "given_sha256": file_sha256(data) if from_command_line else pointer.get("given_sha256"),
        }
        atomic_write_bytes(self.pointer_path, json.dumps(new).encode())
        keep = {new["current"], new["previous"]}
        for old in self.dir.glob("*.s2l"):
            if old.stem not in keep:
                old.unlink(missing_ok=True)
        signed = f", signed by key {bundle.signer_key_id}" if bundle.signature else ", unsigned"
        log.info("bundle %s deployed%s", bundle.digest[:12], signed, extra={"event": "deployed", "bundle_digest": bundle.digest})
        return copy


def better_copy(new: Bundle, old: Bundle) -> bool:
    """Whether `new`, a verified copy of `old`'s body, should replace it: it is signed, and not with the same signature."""
    return bool(new.signature) and new.signature != old.signature


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _new_file(pointer: dict[str, Any], named: Copy) -> bool:
    """Whether the command-line file differs from the one the daemon was last started on."""
    if "given_sha256" in pointer:
        return file_sha256(named[0]) != pointer["given_sha256"]
    return named[1].digest != pointer.get("given")  # a pointer written before whole-file identities


def read_verified(path: Path, trusted_keys: TrustedKeys = ()) -> Copy:
    """The file's bytes and bundle, verified (and, with trusted keys, signed by one of them)."""
    data = read_bundle_bytes(path)
    return data, open_trusted(data, trusted_keys, name=str(path))
