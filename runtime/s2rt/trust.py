"""Which bundles this device runs: the one check shared by `s2rt` and the daemon.

With trusted keys configured, `open_trusted` accepts only a bundle signed by one of them
(a list, so a new key can be rolled out before the old one is retired); the signature is
checked after the envelope and digest and before the body is parsed, so an unsigned or
forged body never reaches the parser. Without trusted keys it reads the bundle as is.

Trusted keys come from `--trusted-key PATH` (repeatable) and the environment variable
`S2RT_TRUSTED_KEYS` (paths separated by `os.pathsep`); a path is a public key file, or a
folder whose `*.pub` files are all trusted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from s2rt.bundle.model import Bundle
from s2rt.bundle.reader import Envelope, parse_bundle, read_bundle
from s2rt.bundle.signing import PUBLIC_SUFFIX, PublicKey, check_signature
from s2rt.errors import KeyFileError

ENV_VAR = "S2RT_TRUSTED_KEYS"
TrustedKeys = Sequence[PublicKey]


def load_trusted_keys(paths: Iterable[str | os.PathLike[str]]) -> tuple[PublicKey, ...]:
    """The public keys in these files and folders, each key once. KeyFileError for a bad path or an empty folder."""
    keys: dict[str, PublicKey] = {}
    for path in paths:
        p = Path(path)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.name.endswith(PUBLIC_SUFFIX) and f.is_file())
            if not files:
                raise KeyFileError(f"{p}: trusted-key folder holds no *{PUBLIC_SUFFIX} files")
        else:
            files = [p]
        for f in files:
            key = PublicKey.load(f)
            keys.setdefault(key.key_id, key)
    return tuple(keys.values())


def trusted_keys_from(paths: Sequence[str] | None, environ: Mapping[str, str] = os.environ) -> tuple[PublicKey, ...]:
    """The keys of `--trusted-key` options plus those named by S2RT_TRUSTED_KEYS."""
    from_env = [p for p in environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    return load_trusted_keys([*(paths or []), *from_env])


def open_trusted(source: str | os.PathLike[str] | bytes, trusted_keys: TrustedKeys | None = None, name: str | None = None) -> Bundle:
    """Read a bundle from a path or from bytes; with trusted keys, only if one of them signed it.

    Raises BundleError (SignatureError, a subclass, when the signature is the problem).
    """

    def check(envelope: Envelope) -> None:
        check_signature(envelope, trusted_keys or ())

    checker = check if trusted_keys else None
    if isinstance(source, bytes):
        return parse_bundle(source, name or "<bundle>", checker)
    return read_bundle(source, checker)


def signer_of(bundle: Bundle, trusted_keys: TrustedKeys) -> PublicKey:
    """The trusted key that signed a bundle `open_trusted` accepted with these keys."""
    return next(k for k in trusted_keys if k.key_id == bundle.signer_key_id)
