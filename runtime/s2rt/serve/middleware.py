"""ASGI middleware around the API: request metrics and logs, bearer tokens, OPTIONS, body size limits.

Order, outermost first: `RequestMetrics` (sees every response, even refusals),
`BearerAuth` (refuses before any body is read), `Options` (answers OPTIONS from the
routes), `BodyLimit` (reads the body up to its limit, then hands it on; 413 beyond it;
uploads are streamed to a file instead of memory).
"""

from __future__ import annotations

import hmac
import json
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import IO, Any

from starlette.routing import Match, Route

from s2rt.serve.errors import disk_full
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


class Options:
    """OPTIONS on a route answers 204 with `Allow` listing its methods (404 for no route)."""

    def __init__(self, app: ASGIApp, routes: Iterable[Any]) -> None:
        self.app, self.routes = app, [r for r in routes if isinstance(r, Route)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            await self.app(scope, receive, send)
            return
        methods = {m for r in self.routes if r.matches(scope)[0] != Match.NONE for m in r.methods or ()}
        if not methods:
            await send_error(send, 404, "not_found", f"no route {scope['path']}")
            return
        allow = ", ".join(sorted(methods | {"OPTIONS"})).encode()
        await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", allow)]})
        await send({"type": "http.response.body", "body": b""})


class BodyLimit:
    """Reads a request body up to `limit` bytes (`overrides` per path) and replays it to the app; 413 beyond.

    The bodies of the paths in `spool` (bundle uploads) go to a file in `spool_dir` as they
    arrive, not to memory; the app finds it at `request.state.body_file`, deleted after the
    request. `spool_dir` should be on the state directory's disk: /tmp is often RAM on a device.
    """

    def __init__(
        self, app: ASGIApp, limit: int, overrides: dict[str, int], spool: frozenset[str] = frozenset(), spool_dir: Path | None = None
    ) -> None:
        self.app, self.limit, self.overrides, self.spool, self.spool_dir = app, limit, overrides, spool, spool_dir

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        limit = self.overrides.get(scope["path"], self.limit)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await send_error(send, 413, "too_large", f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
            return
        if scope["path"] in self.spool and self.spool_dir is not None:
            await self._spooled(scope, receive, send, limit)
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

    async def _spooled(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        assert self.spool_dir is not None
        try:
            with tempfile.NamedTemporaryFile(dir=self.spool_dir, prefix="upload-", suffix=".part") as f:
                if not await _copy_body(receive, f, limit):
                    await send_error(send, 413, "too_large", f"request body exceeds the limit of {limit} bytes")
                    return
                scope.setdefault("state", {})["body_file"] = Path(f.name)

                async def drained() -> Message:
                    return await receive()

                await self.app(scope, drained, send)
        except OSError as e:
            message = disk_full(e)
            if message is None:
                raise
            await send_error(send, 507, "insufficient_storage", message)


async def _copy_body(receive: Receive, f: IO[bytes], limit: int) -> bool:
    """Write the body to `f` as it arrives; False once it exceeds `limit` (or the client left)."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return False
        f.write(chunk)
        if not message.get("more_body", False):
            f.flush()
            return True
