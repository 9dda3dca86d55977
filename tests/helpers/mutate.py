"""Byte-level mutations of valid files, shared by the hypothesis property tests and the atheris harness.

A mutation is a list of small operations applied in order. Positions are taken modulo
the current length, so any integers make a valid operation (and hypothesis shrinks them).
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Sequence

import numpy as np
from s2rt.bundle.model import signing_message
from s2rt.bundle.reader import read_envelope
from s2rt.bundle.writer import serialize_envelope

# Values that break length and offset arithmetic: sign bits, near-overflows, zero.
INTERESTING_U32 = (0, 1, 2, 3, 4, 7, 8, 15, 16, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
                   0x3FFFFFFF, 0x40000000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFC, 0xFFFFFFFE, 0xFFFFFFFF)  # fmt: skip

Op = tuple[str, int, int, int]
OPS = ("flip", "truncate", "word", "splice", "insert", "delete", "byte")


def mutate(data: bytes, ops: Sequence[Op], donor: bytes) -> bytes:
    """`data` with `ops` applied; `donor` supplies the bytes of splices and inserts."""
    buf = bytearray(data)
    for kind, a, b, c in ops:
        n = len(buf)
        if n == 0:
            break
        if kind == "flip":
            buf[a % n] ^= 1 << (b % 8)
        elif kind == "byte":
            buf[a % n] = b % 256
        elif kind == "truncate":
            del buf[a % (n + 1) :]
        elif kind == "word":  # a declared size, offset or count replaced, 4-byte aligned like FlatBuffers' own
            pos = (a % n) & ~3
            if pos + 4 <= n:
                struct.pack_into("<I", buf, pos, b % 2**32)
        elif kind == "splice":
            chunk = donor[a % len(donor) :][: 1 + b % 64]
            dst = c % n
            buf[dst : dst + len(chunk)] = chunk
        elif kind == "insert":
            chunk = donor[a % len(donor) :][: 1 + b % 64]
            buf[c % n : c % n] = chunk
        elif kind == "delete":
            del buf[a % n : a % n + 1 + b % 64]
    return bytes(buf)


def body_of(bundle: bytes) -> bytes:
    env = read_envelope(bundle)
    return bundle[env.body_start : env.body_end]


def reseal(body: bytes, signer: object | None = None, version: tuple[int, int] = (1, 1)) -> bytes:
    """A fresh envelope around (possibly mutated) body bytes: recomputed digest, and a valid
    signature when `signer` (a SigningKey) is given, so the mutation reaches the body parser."""
    digest = hashlib.sha256(body).digest()
    if signer is None:
        return serialize_envelope(body, version, digest)
    signature = signer.sign(signing_message(version, digest))  # type: ignore[attr-defined]
    return serialize_envelope(body, version, digest, signature, signer.key_id)  # type: ignore[attr-defined]


def npz_bytes(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)  # type: ignore[operator]
    return buffer.getvalue()
