"""Errors the daemon answers with: an HTTP status, a short code and the field at fault."""

from __future__ import annotations

import errno
import sqlite3

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class ApiError(Exception):
    """Raised by the service for a request it refuses; the app turns it into a JSON error response."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def body(self) -> dict[str, str | None]:
        return {"error": self.code, "field": self.field, "message": self.message}


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_input", f"{field}: {message}", field)


def conflict(message: str, field: str | None = None) -> ApiError:
    return ApiError(409, "conflict", message, field)


def not_found(message: str, field: str | None = None) -> ApiError:
    return ApiError(404, "not_found", message, field)


def disk_full(e: BaseException) -> str | None:
    """What to tell the client if `e`, or an error it was raised from, is a full disk or quota; else None.

    OSError ENOSPC/EDQUOT from file writes; SQLITE_FULL from the database (SQLite's code for
    both a full disk and a database at its size limit)."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in DISK_FULL_ERRNOS:
            return f"the disk holding the daemon's state is full ({cause.strerror or cause}); free space there and retry"
        if isinstance(cause, sqlite3.Error) and getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return f"the disk holding the daemon's sample database is full ({cause}); free space there and retry"
        cause = cause.__cause__ or cause.__context__
    return None


def insufficient_storage(message: str) -> ApiError:
    return ApiError(507, "insufficient_storage", message)
