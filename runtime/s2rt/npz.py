"""Read an `.npz` file strictly: no pickle, bounded memory, and a clear error for anything odd.

`np.load` trusts a member's `.npy` header: it allocates the declared shape before it
reads a byte, and a deflated member can expand a thousandfold. This reader checks
before allocating that every member is a `NAME.npy` whose header's shape and dtype
account for exactly the member's declared size, that the declared sizes together stay
within a budget (a multiple of the file size, at least `MIN_BUDGET`), and that no array
holds Python objects; it then reads each array in chunks into a lazily allocated buffer,
so the memory touched is what the file really holds. The zip CRC of each member is
checked. Any failure raises the caller's error type naming the file.
"""

from __future__ import annotations

import math
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from s2rt.errors import S2LError

MIN_BUDGET = 256 << 20  # bytes of arrays any npz may declare...
EXPANSION = 16  # ...or this many times its file size, whichever is more
MAX_MEMBERS = 1024
MAX_HEADER = 10_000  # numpy's own default limit for an .npy header
CHUNK = 1 << 20
_ENCRYPTED = 0x1  # zip general-purpose flag bit 0

NPZ_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, KeyError, SyntaxError)


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class _Bad(Exception):
    """Something specific is wrong; the message says what."""


def read_npz(path: Path, error: type[S2LError], what: str) -> dict[str, np.ndarray]:
    """All arrays of the file, or `error` naming the file when it is not a plain-array npz."""
    try:
        with open(path, "rb") as fh:
            budget = max(MIN_BUDGET, EXPANSION * _size(fh))
            with zipfile.ZipFile(fh) as archive:
                return _read_members(archive, budget)
    except _Bad as e:
        raise error(f"{path}: not a readable {what}: {e}") from None
    except NPZ_READ_ERRORS as e:
        raise error(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from None


def _size(fh: IO[bytes]) -> int:
    fh.seek(0, 2)
    size = fh.tell()
    fh.seek(0)
    return size


def _read_members(archive: zipfile.ZipFile, budget: int) -> dict[str, np.ndarray]:
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise _Bad(f"{len(infos)} members, more than {MAX_MEMBERS}")
    declared = sum(i.file_size for i in infos)
    if declared > budget:
        raise _Bad(f"its members declare {declared:,} bytes, more than the {budget:,} allowed for this file")
    arrays: dict[str, np.ndarray] = {}
    for info in infos:
        if not info.filename.endswith(".npy") or info.is_dir():
            raise _Bad(f"member {info.filename[:80]!r} is not an .npy array")
        if info.flag_bits & _ENCRYPTED:
            raise _Bad(f"member {info.filename[:80]!r} is encrypted")
        name = info.filename[: -len(".npy")]
        if name in arrays:
            raise _Bad(f"array {name[:80]!r} appears twice")
        with archive.open(info) as member:
            arrays[name] = _read_array(member, info)
    return arrays


def _read_array(member: IO[bytes], info: zipfile.ZipInfo) -> np.ndarray:
    version = np.lib.format.read_magic(member)
    if version not in _HEADER_READERS:
        raise _Bad(f"{info.filename[:80]!r}: .npy format version {version} is not supported (1.0 and 2.0 are)")
    try:
        shape, fortran, dtype = _HEADER_READERS[version](member, max_header_size=MAX_HEADER)
    except (SyntaxError, ValueError, TypeError, tokenize.TokenError) as e:  # numpy re-parses a bad header with tokenize
        raise _Bad(f"{info.filename[:80]!r}: unreadable .npy header ({type(e).__name__})") from None
    if dtype.hasobject:
        raise _Bad(f"{info.filename[:80]!r} holds Python objects (pickle), which s2l never reads")
    if any(d < 0 for d in shape):
        raise _Bad(f"{info.filename[:80]!r}: its header declares the shape {shape}, with a negative dimension")
    nbytes = math.prod(shape) * dtype.itemsize
    if member.tell() + nbytes != info.file_size:
        raise _Bad(
            f"{info.filename[:80]!r}: its header declares {dtype} {shape} ({nbytes:,} bytes) but the member holds "
            f"{info.file_size - member.tell():,} bytes of data"
        )
    array = np.empty(math.prod(shape), dtype=dtype)  # pages are touched only as data arrives
    view = array.view(np.uint8).reshape(-1).data
    filled = 0
    while filled < nbytes:
        got = member.readinto(view[filled : filled + CHUNK])  # type: ignore[attr-defined]
        if not got:
            raise _Bad(f"{info.filename[:80]!r} ends after {filled:,} of {nbytes:,} bytes")
        filled += got
    if member.read(1):  # also makes zipfile check the member's CRC
        raise _Bad(f"{info.filename[:80]!r} has bytes after its array")
    return array.reshape(shape, order="F" if fortran else "C")
