"""Connections that cannot hold the daemon: read deadlines, and room made for new clients.

uvicorn closes a keep-alive connection that stays silent after a response, but has no
deadline before the first request, restarts its timer on every byte (so a request head
sent one byte at a time never expires) and none for a slow body. With 256 such
connections, `--max-connections`, every request got 503, health checks included.

Each connection here is in one of three phases, each with its own deadline that bytes
arriving do not extend:

- waiting for a request head (new, between requests, or trickling headers): closed after
  `idle` seconds;
- receiving a request body: closed after `body` seconds from the end of its head (the app
  sees a disconnect; nothing was acknowledged);
- busy: the request is complete and the app works on it or sends the answer; no deadline.
  Every answer of this API is one body, so the connection is waiting again as soon as it
  is handed to the transport, even if the client does not read it.

And when a new connection arrives with the daemon at `--max-connections`, the connections
that have waited longest for bytes (first two phases) are closed to make room: only
requests that are really in progress count against the limit. Bearer tokens cannot
help here (they are read after the head) and every loopback client shares one address,
so a per-peer quota could not tell a hostile local process from the operator's; eviction
does not need to. Only when every connection is busy do new requests get 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

WAITING, BODY, BUSY = "waiting", "body", "busy"


@dataclass(frozen=True)
class Deadlines:
    idle: float = 10.0
    body: float = 60.0


def guarded_protocol(deadlines: Deadlines) -> type[H11Protocol]:
    """The protocol class to give uvicorn (`Config(http=...)`) with these deadlines."""
    return type("GuardedProtocol", (GuardedH11Protocol,), {"deadlines": deadlines})


class _Evictions:
    """Counts closed connections; logs a warning at most once a minute, not once per connection."""

    EVERY = 60.0

    def __init__(self) -> None:
        self.count, self.logged_at = 0, float("-inf")

    def note(self, closed: int, limit: int) -> None:
        self.count += closed
        now = time.monotonic()
        if self.count and now - self.logged_at >= self.EVERY:
            log.warning("at --max-connections %d: closed %d connections that waited longest for bytes", limit, self.count)
            self.count, self.logged_at = 0, now


_evictions = _Evictions()


class GuardedH11Protocol(H11Protocol):
    deadlines = Deadlines()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.deadlines.idle  # type: ignore[assignment]  # uvicorn's own timer, restarted by every byte
        self.phase = ""
        self.phase_since = 0.0
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._make_room()
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- phases and deadlines ----------------------------------------------------------
    def _current_phase(self) -> str:
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return WAITING
        return BODY if cycle.more_body else BUSY

    def _watch(self) -> None:
        phase = self._current_phase()
        if phase == self.phase:
            return
        self.phase, self.phase_since = phase, self.loop.time()
        self._disarm()
        seconds = {WAITING: self.deadlines.idle, BODY: self.deadlines.body}.get(phase)
        if seconds is not None:
            self.deadline = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expire(self) -> None:
        self.deadline = None
        if self._current_phase() == self.phase:  # still where it was when the timer started
            log.debug("closing a connection %s for more than its deadline", "idle" if self.phase == WAITING else "in its body")
            self._close()

    @property
    def evictable(self) -> bool:
        return self.phase in (WAITING, BODY) and not self.transport.is_closing()

    # -- making room -------------------------------------------------------------------
    def _make_room(self) -> None:
        """Close the connections waiting longest for bytes until this one fits under the limit.

        uvicorn answers 503 when a request finds `len(connections) >= limit_concurrency`,
        counting its own connection, so this one is served if at most limit - 2 others remain.
        """
        limit = self.limit_concurrency
        if limit is None:
            return
        excess = len(self.connections) - (limit - 2)
        if excess <= 0:
            return
        idle = sorted((c for c in self.connections if isinstance(c, GuardedH11Protocol) and c.evictable), key=lambda c: c.phase_since)
        for other in idle[:excess]:
            other._close()
        _evictions.note(min(excess, len(idle)), limit)

    def _close(self) -> None:
        """Close now; unsent answer bytes are dropped, since a transport flushes them before it closes,
        and a client that does not read would keep the socket forever."""
        self._disarm()
        self.connections.discard(self)
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        elif not self.transport.is_closing():
            self.transport.close()
