"""Signed global adapter versions: what a fleet server signs and what a daemon checks.

A fleet server aggregates the devices' adapters into a global version, writes it as an
adapter state file (`s2rt.state`, .npz without pickle) and signs
`message(bundle digest, SHA-256 of the file)` with the fleet's Ed25519 key. The
signature and the signer's key id travel beside the file (HTTP headers
`SIGNATURE_HEADER`, `KEY_HEADER`). The bundle digest is part of what is signed, so a
version signed for one bundle does not verify on a daemon serving another; the daemon
checks the signature before it parses the file.

Standard library and `s2rt.bundle.signing` only: the fleet server imports this without
the daemon's FastAPI.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from s2rt.bundle.model import Bundle
from s2rt.bundle.signing import PublicKey, SigningKey
from s2rt.errors import SignatureError
from s2rt.state import Adapters, save_adapters

DOMAIN = b"s2l fleet adapters v1\x00"
SIGNATURE_HEADER = "x-s2l-fleet-signature"  # 128 hex digits: the Ed25519 signature
KEY_HEADER = "x-s2l-fleet-key"  # the signer's key id (`PublicKey.key_id`)
SIGNATURE_BYTES = 64


def message(bundle_digest: str, data: bytes) -> bytes:
    """What the fleet key signs: the bundle the version belongs to and the file's SHA-256."""
    return DOMAIN + bundle_digest.encode("ascii") + b"\x00" + hashlib.sha256(data).digest()


def adapter_file(adapters: Adapters, bundle: Bundle, **meta: Any) -> bytes:
    """The adapter state file of `adapters` for `bundle`, as bytes (what `POST /v1/adapters` takes)."""
    with tempfile.TemporaryDirectory(prefix="s2l-global-") as folder:
        path = Path(folder) / "global.npz"
        save_adapters(path, adapters, bundle, **meta)
        return path.read_bytes()


def sign(data: bytes, bundle_digest: str, key: SigningKey) -> dict[str, str]:
    """The headers that carry `key`'s signature of the file `data` for bundle `bundle_digest`."""
    return {SIGNATURE_HEADER: key.sign(message(bundle_digest, data)).hex(), KEY_HEADER: key.key_id}


def verify(data: bytes, bundle_digest: str, signature: str | None, key_id: str | None, keys: Sequence[PublicKey]) -> PublicKey:
    """The fleet key that signed `data` for `bundle_digest`; SignatureError saying why when none did."""
    ids = ", ".join(k.key_id for k in keys)
    if not signature or not key_id:
        raise SignatureError(
            f"the adapter version is not signed: the {SIGNATURE_HEADER} and {KEY_HEADER} headers must carry a signature "
            f"by a fleet key ({ids})"
        )
    try:
        raw = bytes.fromhex(signature)
    except ValueError:
        raw = b""
    if len(raw) != SIGNATURE_BYTES:
        raise SignatureError(f"{SIGNATURE_HEADER}: expected {2 * SIGNATURE_BYTES} hex digits, got {len(signature)} characters")
    key = next((k for k in keys if k.key_id == key_id), None)
    if key is None:
        raise SignatureError(f"the adapter version is signed by key {key_id[:32]}, which is not among the fleet keys ({ids})")
    if not key.verifies(raw, message(bundle_digest, data)):
        raise SignatureError(
            f"the signature by fleet key {key.key_id} does not verify for bundle {bundle_digest[:16]}: the file was altered "
            "after signing, it was signed for another bundle, or the signature is forged"
        )
    return key
