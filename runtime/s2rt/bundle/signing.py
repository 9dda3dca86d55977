"""Ed25519 bundle signatures: key files, signing a bundle, checking a signature.

A signature covers `signing_message(format version, body SHA-256)`, so signing rebuilds
only the small envelope around the body and never touches the body's bytes. A key's id
is the first 16 hex digits of the SHA-256 of its raw 32-byte public key.

Key files are PEM: the private key PKCS#8 (unencrypted, file mode 0600), the public key
SubjectPublicKeyInfo, beside it as `KEY.pub`. The `cryptography` package is imported
only here and only when a key is used, so an unsigned workflow does not need it
(`pip install 's2l-runtime[sign]'`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from s2rt.atomic import atomic_write_bytes
from s2rt.bundle.model import KEY_ID_CHARS, SIGNED_SINCE, Bundle, signing_message
from s2rt.bundle.reader import Envelope, parse_bundle, read_bundle_bytes, read_envelope
from s2rt.bundle.writer import serialize_envelope
from s2rt.errors import KeyFileError, SignatureError

PUBLIC_SUFFIX = ".pub"
MAX_KEY_FILE = 64 * 1024


def _crypto() -> tuple[ModuleType, ModuleType, type[Exception]]:
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise KeyFileError(
            "bundle signatures need the `cryptography` package, which is not installed: pip install 's2l-runtime[sign]'"
        ) from None
    return ed25519, serialization, InvalidSignature


def key_id(raw_public_key: bytes) -> str:
    return hashlib.sha256(raw_public_key).hexdigest()[:KEY_ID_CHARS]


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_KEY_FILE:
            raise KeyFileError(f"{path}: {path.stat().st_size:,} bytes, too large for a {what} file")
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such {what} file") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read the {what} file: {e.strerror}") from None


@dataclass(frozen=True)
class PublicKey:
    """A trusted Ed25519 public key; `source` names where it came from, for messages."""

    raw: bytes
    source: str = ""

    @property
    def key_id(self) -> str:
        return key_id(self.raw)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicKey:
        p = Path(path)
        data = _read_key_file(p, "public key")
        ed25519, serialization, _ = _crypto()
        if b"PRIVATE KEY" in data:
            raise KeyFileError(f"{p}: is a private key; give its public key ({p.name}{PUBLIC_SUFFIX}) as the trusted key")
        try:
            key: Any = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as e:
            raise KeyFileError(f"{p}: not a PEM public key ({e})") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise KeyFileError(f"{p}: is a {type(key).__name__}, expected an Ed25519 public key (from `s2conv keygen`)")
        return cls(key.public_bytes_raw(), str(p))

    def pem(self) -> bytes:
        ed25519, serialization, _ = _crypto()
        key = ed25519.Ed25519PublicKey.from_public_bytes(self.raw)
        return bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def verifies(self, signature: bytes, message: bytes) -> bool:
        ed25519, _, invalid_signature = _crypto()
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except invalid_signature:
            return False
        return True


class SigningKey:
    """An Ed25519 private key that signs bundles (a `writer.Signer`)."""

    def __init__(self, private_key: Any, source: str = "") -> None:
        self._key = private_key
        self.source = source
        self.public_key = PublicKey(private_key.public_key().public_bytes_raw(), source + PUBLIC_SUFFIX if source else "")

    @property
    def key_id(self) -> str:
        return self.public_key.key_id

    @classmethod
    def generate(cls) -> SigningKey:
        ed25519, _, _ = _crypto()
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        p = Path(path)
        data = _read_key_file(p, "signing key")
        ed25519, serialization, _ = _crypto()
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise KeyFileError(f"{p}: the private key is encrypted; s2l reads unencrypted keys (keep the file mode 0600)") from None
        except ValueError as e:
            raise KeyFileError(f"{p}: not a PEM private key ({e}); a signing key comes from `s2conv keygen`") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise KeyFileError(f"{p}: is a {type(key).__name__}, expected an Ed25519 private key (from `s2conv keygen`)")
        return cls(key, str(p))

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message))

    def save(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write the private key (new file, mode 0600) and `PATH.pub`; refuses to overwrite either."""
        _, serialization, _ = _crypto()
        p = Path(path)
        pub = p.with_name(p.name + PUBLIC_SUFFIX)
        for existing in (p, pub):
            if existing.exists():
                raise KeyFileError(f"{existing}: already exists; keygen never overwrites a key (choose another path)")
        pem = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(pem)
            atomic_write_bytes(pub, self.public_key.pem())
        except OSError as e:
            raise KeyFileError(f"{p}: cannot write the key: {e.strerror}") from None
        self.source = str(p)
        self.public_key = PublicKey(self.public_key.raw, str(pub))
        return p, pub


def sign_bundle_bytes(data: bytes, key: SigningKey, source: str = "<bundle>") -> bytes:
    """The bundle re-enveloped with `key`'s signature (replacing any earlier one); the body is copied unchanged.

    The bundle is fully verified first: nothing that does not read is ever signed. A
    format 1.0 bundle becomes 1.1, the version that defines the signature fields.
    """
    parse_bundle(data, source)
    envelope = read_envelope(data, source)
    version = max(envelope.version, SIGNED_SINCE)
    signature = key.sign(signing_message(version, envelope.body_sha256))
    body = memoryview(data)[envelope.body_start : envelope.body_end]
    return serialize_envelope(body, version, envelope.body_sha256, signature, key.key_id)


def sign_bundle_file(path: str | os.PathLike[str], key: SigningKey, output: str | os.PathLike[str] | None = None) -> Bundle:
    """Sign the bundle at `path`, writing `output` (default: `path` itself, atomically); returns the signed bundle."""
    signed = sign_bundle_bytes(read_bundle_bytes(path), key, str(path))
    target = Path(output) if output is not None else Path(path)
    atomic_write_bytes(target, signed)
    return parse_bundle(signed, str(target))


def check_signature(envelope: Envelope, trusted: Sequence[PublicKey]) -> PublicKey:
    """The trusted key that signed `envelope`; SignatureError saying why when there is none."""
    ids = ", ".join(k.key_id for k in trusted)
    if not envelope.signature:
        raise SignatureError(
            f"{envelope.source}: bundle is not signed, and only bundles signed by a trusted key ({ids}) are accepted; "
            f"sign it on the host with `s2conv sign BUNDLE --key KEY`"
        )
    key = next((k for k in trusted if k.key_id == envelope.signer_key_id), None)
    if key is None:
        raise SignatureError(
            f"{envelope.source}: bundle is signed by key {envelope.signer_key_id}, which is not among the trusted keys ({ids})"
        )
    if not key.verifies(envelope.signature, signing_message(envelope.version, envelope.body_sha256)):
        raise SignatureError(
            f"{envelope.source}: the signature by key {key.key_id} does not verify: the bundle was altered after "
            f"signing, or the signature is forged"
        )
    return key
