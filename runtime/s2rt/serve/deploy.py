"""Which bundle the daemon serves: verified copies under DIR/bundles and a pointer, DIR/deploy.json.

    {"current": <digest>, "given": <digest of the bundle named on the command line>, "previous": <digest>}

A bundle (from the command line or an upload) is parsed and verified before it is
copied in; the copy is written atomically before the pointer moves, so a crash leaves
the old bundle or the new one in service, never a half-written file. Restarting on the
bundle file the daemon was last started on keeps a bundle uploaded since (the upload is
newer); restarting on a different file deploys that file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from s2rt.atomic import atomic_write_bytes
from s2rt.bundle import Bundle
from s2rt.errors import BundleError, StateError
from s2rt.trust import TrustedKeys, open_trusted

log = logging.getLogger(__name__)


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

    def startup(self, given: Path | None) -> Bundle:
        """The bundle to serve at start: `given` if it is new to this state dir, else the current deployment."""
        pointer = self.pointer()
        if given is not None:
            try:
                data, bundle = read_verified(given, self.trusted_keys)
            except BundleError as e:
                if not pointer.get("current"):
                    raise
                log.error("cannot use %s (%s); serving the bundle deployed before, %s", given, e, pointer["current"][:12])
            else:
                if bundle.digest != pointer.get("given") or not pointer.get("current"):
                    self.install(data, bundle, from_command_line=True)
                    return bundle
        if not pointer.get("current"):
            raise StateError(f"{self.pointer_path.parent}: no bundle deployed yet; start with `s2rt serve BUNDLE --state-dir ...`")
        _, bundle = read_verified(self.path(pointer["current"]), self.trusted_keys)
        return bundle

    def install(self, data: bytes, bundle: Bundle, *, from_command_line: bool = False) -> None:
        """Make `bundle` (already verified, `data` its bytes) the deployed one, durably."""
        pointer = self.pointer()
        atomic_write_bytes(self.path(bundle.digest), data)
        previous = pointer.get("current")
        new = {
            "current": bundle.digest,
            "given": bundle.digest if from_command_line else pointer.get("given"),
            "previous": previous if previous != bundle.digest else pointer.get("previous"),
        }
        atomic_write_bytes(self.pointer_path, json.dumps(new).encode())
        keep = {new["current"], new["previous"]}
        for old in self.dir.glob("*.s2l"):
            if old.stem not in keep:
                old.unlink(missing_ok=True)
        log.info("bundle %s deployed", bundle.digest[:12], extra={"event": "deployed", "bundle_digest": bundle.digest})


def read_verified(path: Path, trusted_keys: TrustedKeys = ()) -> tuple[bytes, Bundle]:
    """The file's bytes and bundle, verified (and, with trusted keys, signed by one of them)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: no such bundle file") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot read bundle: {e.strerror}") from None
    return data, open_trusted(data, trusted_keys, name=str(path))
