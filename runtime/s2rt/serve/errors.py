"""Errors the daemon answers with: an HTTP status, a short code and the field at fault."""

from __future__ import annotations


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
