"""Bundle uploads are streamed to a file under a limit, so a big one cannot take the daemon's
memory (the audit: one 200 MB PUT took RSS from 117 to 724 MB, two at once to 1,295 MB)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from s2rt.bundle import read_bundle

MIB = 1 << 20
LAB = ("--allow-unauthenticated-control", "--allow-unsigned-deploy")  # uploads over loopback TCP without a token or key
DEFAULT_LIMIT = 16 * MIB
RSS_SLACK = 48 * MIB  # allocator noise and one request's buffers; an upload held in memory is many times this


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def zeros(total: int) -> Iterator[bytes]:
    block = b"\0" * MIB
    for _ in range(total // MIB):
        yield block


def put_chunked(port: int, total: int) -> int:
    """PUT `total` bytes with chunked transfer encoding (no Content-Length); the status line's code."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(
            b"PUT /v1/bundle HTTP/1.1\r\nHost: daemon\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        try:
            for block in zeros(total):
                s.sendall(b"%x\r\n%s\r\n" % (len(block), block))
            s.sendall(b"0\r\n\r\n")
        except OSError:  # the daemon answered and closed before taking it all
            pass
        head = s.recv(4096)
    return int(head.split(b" ", 2)[1])


def test_an_upload_ten_times_the_limit_is_refused_without_holding_it(serve, tiny_file, tmp_path):
    d = serve(str(tiny_file), *LAB, state=tmp_path / "state")
    port = int(d.url.rsplit(":", 1)[1])
    assert d.client.get("/v1/health/ready").status_code == 200
    before = rss(d.proc.pid)
    declared = httpx.put(
        f"{d.url}/v1/bundle", content=zeros(10 * DEFAULT_LIMIT), headers={"content-length": str(10 * DEFAULT_LIMIT)}, timeout=60
    )
    assert declared.status_code == 413 and declared.json()["error"] == "too_large"
    assert str(DEFAULT_LIMIT) in declared.json()["message"]
    assert put_chunked(port, 10 * DEFAULT_LIMIT) == 413
    grown = rss(d.proc.pid) - before
    assert grown < RSS_SLACK, f"RSS grew by {grown / MIB:.0f} MiB"
    assert d.client.get("/v1/health/ready").status_code == 200
    assert not list((tmp_path / "state" / "uploads").iterdir()), "the refused upload's file is gone"


def test_an_upload_under_a_raised_limit_goes_through_a_file(serve, tiny_file, har_bundle, tmp_path):
    d = serve(str(tiny_file), *LAB, "--max-bundle-bytes", str(64 * MIB), state=tmp_path / "state")
    big = httpx.put(f"{d.url}/v1/bundle", content=zeros(48 * MIB), headers={"content-length": str(48 * MIB)}, timeout=60)
    assert big.status_code == 422 and big.json()["error"] == "invalid_bundle"  # read from the file and refused
    deployed = d.client.put("/v1/bundle", content=har_bundle.read_bytes())
    assert deployed.status_code == 200 and deployed.json()["bundle_digest"] == read_bundle(har_bundle).digest
    # the spooled file goes once the request is over, which is just after its answer is sent
    uploads, deadline = tmp_path / "state" / "uploads", time.monotonic() + 10
    while list(uploads.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(uploads.iterdir())
