"""Read an `.npz` file without pickle and without leaking its handle on a bad file."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from s2rt.errors import S2LError

NPZ_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, KeyError)


def read_npz(path: Path, error: type[S2LError], what: str) -> dict[str, np.ndarray]:
    """All arrays of the file, or `error` naming the file when it is not a plain-array npz."""
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except NPZ_READ_ERRORS as e:
        raise error(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from None
