"""ASGI middleware around the API: request metrics and logs, bearer tokens, body size limits.

Order, outermost first: `RequestMetrics` (sees every response, even refusals),
`BearerAuth` (refuses before any body is read), `BodyLimit` (reads the body up to its
limit, then hands it on; 413 beyond it).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from s2rt.serve.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("s2rt.access")


async def send_error(send: Send, status: int, code: str, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps({"error": code, "field": None, "message": message}, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics, log_requests: bool) -> None:
        self.app, self.metrics, self.log_requests = app, metrics, log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.inc(route=route, method=scope["method"], status=str(status))
            self.metrics.latency.observe(seconds, route=route)
            if self.log_requests:
                method, path, ms = scope["method"], scope["path"], round(seconds * 1e3, 3)
                fields = {"event": "request", "method": method, "path": path, "status": status, "ms": ms}
                access_log.info("%s %s %d", method, path, status, extra=fields)


class BearerAuth:
    """With tokens configured, every path except `public` needs `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, tokens: tuple[bytes, ...], public: frozenset[str]) -> None:
        self.app, self.tokens, self.public = app, tokens, public

    def allowed(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        ok = False
        for token in self.tokens:  # compare with every token, so the time does not tell which one matched
            ok |= hmac.compare_digest(given.strip(), token)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.tokens and scope["path"] not in self.public and not self.allowed(scope):
            await send_error(
                send, 401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer …)", ((b"www-authenticate", b"Bearer"),)
            )
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """Reads a request body up to `limit` bytes (`overrides` per path) and replays it to the app; 413 beyond."""

    def __init__(self, app: ASGIApp, limit: int, overrides: dict[str, int]) -> None:
        self.app, self.limit, self.overrides = app, limit, overrides

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        limit = self.overrides.get(scope["path"], self.limit)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await send_error(send, 413, "too_large", f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_error(send, 413, "too_large", f"request body exceeds the limit of {limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
