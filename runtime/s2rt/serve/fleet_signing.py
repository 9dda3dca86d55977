"""Signed global adapter versions: what a fleet server signs and what a daemon checks.

A fleet server aggregates the devices' adapters into a global version, writes it as an
adapter state file (`s2rt.state`, .npz without pickle) and signs
`message(bundle digest, sequence, SHA-256 of the file)` with the fleet's Ed25519 key. The
signature, the signer's key id and the sequence travel beside the file (HTTP headers
`SIGNATURE_HEADER`, `KEY_HEADER`, `SEQUENCE_HEADER`). The bundle digest is part of what is
signed, so a version signed for one bundle does not verify on a daemon serving another;
the daemon checks the signature before it parses the file. The sequence is a number that
grows with every version the server signs (its clock in nanoseconds, kept strictly
increasing): a daemon refuses a version whose sequence is not above the last one it
imported, so an old signed version cannot be replayed to roll a device back.

Standard library and `s2rt.bundle.signing` only: the fleet server imports this without
the daemon's FastAPI.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from s2rt.bundle.model import Bundle
from s2rt.bundle.signing import PublicKey, SigningKey
from s2rt.errors import SignatureError
from s2rt.state import Adapters, save_adapters

DOMAIN = b"s2l fleet adapters v2\x00"  # v2: the sequence is signed too
SIGNATURE_HEADER = "x-s2l-fleet-signature"  # 128 hex digits: the Ed25519 signature
KEY_HEADER = "x-s2l-fleet-key"  # the signer's key id (`PublicKey.key_id`)
SEQUENCE_HEADER = "x-s2l-fleet-sequence"  # decimal: the version's place in the fleet's order
SIGNATURE_BYTES = 64
MAX_SEQUENCE = 2**63 - 1

_last_sequence = 0
_sequence_lock = threading.Lock()


def next_sequence() -> int:
    """A sequence above every one this process gave before: the clock in nanoseconds, or the last plus one."""
    global _last_sequence
    with _sequence_lock:
        _last_sequence = max(time.time_ns(), _last_sequence + 1)
        return _last_sequence


def message(bundle_digest: str, sequence: int, data: bytes) -> bytes:
    """What the fleet key signs: the bundle the version belongs to, its sequence and the file's SHA-256."""
    return DOMAIN + bundle_digest.encode("ascii") + b"\x00" + str(sequence).encode("ascii") + b"\x00" + hashlib.sha256(data).digest()


def parse_sequence(text: str | None) -> int:
    """The sequence header's value; SignatureError naming the header when it is missing or not a number."""
    if not text or not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_SEQUENCE:
        found = "nothing" if not text else repr(text[:40])
        raise SignatureError(f"{SEQUENCE_HEADER}: expected a decimal number in [0, {MAX_SEQUENCE}], got {found}")
    return int(text)


def adapter_file(adapters: Adapters, bundle: Bundle, **meta: Any) -> bytes:
    """The adapter state file of `adapters` for `bundle`, as bytes (what `POST /v1/adapters` takes)."""
    with tempfile.TemporaryDirectory(prefix="s2l-global-") as folder:
        path = Path(folder) / "global.npz"
        save_adapters(path, adapters, bundle, **meta)
        return path.read_bytes()


def sign(data: bytes, bundle_digest: str, key: SigningKey, sequence: int | None = None) -> dict[str, str]:
    """The headers that carry `key`'s signature of the file `data` for bundle `bundle_digest`, as number
    `sequence` in the fleet's order (default: `next_sequence()`)."""
    sequence = next_sequence() if sequence is None else sequence
    signature = key.sign(message(bundle_digest, sequence, data)).hex()
    return {SIGNATURE_HEADER: signature, KEY_HEADER: key.key_id, SEQUENCE_HEADER: str(sequence)}


def verify(
    data: bytes,
    bundle_digest: str,
    signature: str | None,
    key_id: str | None,
    keys: Sequence[PublicKey],
    sequence: str | None = None,
) -> tuple[PublicKey, int]:
    """The fleet key that signed `data` for `bundle_digest` as number `sequence`, and that number;
    SignatureError saying why when no key did."""
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
    number = parse_sequence(sequence)
    key = next((k for k in keys if k.key_id == key_id), None)
    if key is None:
        raise SignatureError(f"the adapter version is signed by key {key_id[:32]}, which is not among the fleet keys ({ids})")
    if not key.verifies(raw, message(bundle_digest, number, data)):
        raise SignatureError(
            f"the signature by fleet key {key.key_id} does not verify for bundle {bundle_digest[:16]} as sequence {number}: "
            "the file or its sequence was altered after signing, it was signed for another bundle, or the signature is forged"
        )
    return key, number
