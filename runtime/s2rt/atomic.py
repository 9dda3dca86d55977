"""Crash-safe file replacement: a reader sees the old file or the new one, never a mix."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

DEFAULT_MODE = 0o666  # narrowed by the umask, as `open()` does: 0644 under the usual umask 022
PRIVATE_MODE = 0o600  # secrets (private keys) whatever the umask


def atomic_write_bytes(path: Path, data: bytes, mode: int = DEFAULT_MODE) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file.

    The file gets `mode` less the process umask (the kernel applies it when the temporary
    file is created: no umask read, so no window where another thread sees it changed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _create_temporary(path: Path, mode: int) -> tuple[int, str]:
    """A new file `.NAME.RANDOM.tmp` beside `path` (`tempfile.mkstemp` would force 0600)."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary file name for {path.name}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
