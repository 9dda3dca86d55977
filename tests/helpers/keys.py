"""Fixed Ed25519 test keys (deterministic, so golden signed bundles are reproducible)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from s2rt.bundle.signing import SigningKey


def test_key(n: int = 1) -> SigningKey:
    """The n-th fixed signing key (its private bytes are n repeated 32 times)."""
    return SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32), f"test-key-{n}")


test_key.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name
