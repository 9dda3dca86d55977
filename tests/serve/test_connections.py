"""Connections that send nothing, or a request head or body byte by byte, cannot lock the
daemon: they are closed at their deadline, and at --max-connections the ones waiting
longest for bytes make room for a new client (the audit: 256 idle connections, 503 for
every request, health included, for 60 s and more)."""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path

import httpx
from helpers.tiny import tiny_bundle, tiny_weights
from s2rt.bundle import write_bundle

BOUND = 30.0  # seconds any closing may take here; the deadlines under test are 1 s and 2 s

SLOW_HEAD = b"GET /v1/health/live HTTP/1.1\r\nHost: daemon\r\nX-Padding: "
SLOW_BODY = b"PUT /v1/bundle HTTP/1.1\r\nHost: daemon\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"


def port_of(daemon) -> int:
    return int(daemon.url.rsplit(":", 1)[1])


def open_connections(port: int, idle: int, slow_head: int, slow_body: int) -> tuple[list[socket.socket], list[socket.socket]]:
    """(all sockets, the ones to trickle bytes into): slow bodies first (a request head that
    arrives at the limit gets a 503 and its connection closes), then idle, then slow heads."""
    bodies = []
    for _ in range(slow_body):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(SLOW_BODY + b"x")
        bodies.append(s)
    quiet = [socket.create_connection(("127.0.0.1", port)) for _ in range(idle)]
    heads = []
    for _ in range(slow_head):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(SLOW_HEAD)
        heads.append(s)
    return bodies + quiet + heads, bodies + heads


def closed_by_peer(s: socket.socket) -> bool:
    try:
        return s.recv(4096) == b""
    except (ConnectionResetError, BlockingIOError):
        return True


def wait_until_all_closed(sockets: list[socket.socket], trickling: list[socket.socket]) -> list[socket.socket]:
    """Trickle a byte every 0.2 s into `trickling` until the daemon closed every socket; returns those still open after BOUND s."""
    still = list(sockets)
    deadline = time.monotonic() + BOUND
    while still and time.monotonic() < deadline:
        readable, _, _ = select.select(still, [], [], 0.2)
        for s in readable:
            if closed_by_peer(s):
                still.remove(s)
        for s in trickling:
            if s in still:
                try:
                    s.send(b"a")
                except OSError:
                    still.remove(s)
    return still


def test_idle_slow_head_and_slow_body_connections_are_closed_at_their_deadlines(serve, tiny_file):
    d = serve(str(tiny_file), "--idle-timeout", "1", "--body-timeout", "2")
    sockets, trickling = open_connections(port_of(d), idle=4, slow_head=4, slow_body=4)
    try:
        open_after = wait_until_all_closed(sockets, trickling)
        assert not open_after, f"{len(open_after)} of {len(sockets)} connections still open after {BOUND} s"
        assert d.client.get("/v1/health/live").status_code == 200
    finally:
        for s in sockets:
            s.close()


def test_a_new_client_is_served_while_idle_connections_fill_max_connections(serve, tiny_file):
    # Long deadlines: only making room can let the health check through here.
    d = serve(str(tiny_file), "--max-connections", "16", "--idle-timeout", "600", "--body-timeout", "600")
    sockets, _ = open_connections(port_of(d), idle=24, slow_head=8, slow_body=8)
    try:
        for _ in range(3):
            with httpx.Client(base_url=d.url, timeout=BOUND) as fresh:
                assert fresh.get("/v1/health/live").status_code == 200
                assert fresh.post("/v1/predict", json={"x": [0.0] * 6}).status_code == 200
        evicted = sum(closed_by_peer(s) for s in select.select(sockets, [], [], 1.0)[0])
        assert evicted >= len(sockets) - 16, "the oldest waiting connections made room"
    finally:
        for s in sockets:
            s.close()
    assert d.stop() == 0


def test_a_keep_alive_client_carries_on_across_the_idle_deadline(serve, tiny_file):
    d = serve(str(tiny_file), "--idle-timeout", "1")
    with httpx.Client(base_url=d.url, timeout=BOUND) as c:
        for _ in range(2):
            assert c.get("/v1/health/ready").status_code == 200
            time.sleep(1.5)
        assert c.post("/v1/predict", json={"x": [[0.0] * 6] * 64}).status_code == 200


def test_a_client_that_does_not_read_its_answer_does_not_keep_its_socket(serve, tmp_path):
    # An 8 MB bundle: more than the kernel's socket buffers take, so most of the answer waits in
    # the daemon's transport, which would flush it before closing, forever for a client that does not read.
    big = tmp_path / "big.s2l"
    write_bundle(tiny_bundle(tiny_weights(d_in=2000, d_hidden=1000)), big)
    d = serve(str(big), "--idle-timeout", "1", "--cache-capacity", "16")
    fds = Path(f"/proc/{d.proc.pid}/fd")
    assert d.client.get("/v1/bundle").status_code == 200  # whatever a first download opens for good is in the baseline
    baseline = len(list(fds.iterdir()))
    stalled = []
    for _ in range(3):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port_of(d)))
        s.sendall(b"GET /v1/bundle HTTP/1.1\r\nHost: daemon\r\n\r\n")
        stalled.append(s)
    try:
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline and len(list(fds.iterdir())) > baseline:
            time.sleep(0.2)
        assert len(list(fds.iterdir())) <= baseline, "the daemon still holds the sockets of clients that stopped reading"
    finally:
        for s in stalled:
            s.close()
