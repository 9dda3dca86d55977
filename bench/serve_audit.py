"""Rerun two figures of the daemon audit on a real `s2rt serve` (loopback only, bounded).

    .venv/bin/python bench/serve_audit.py idle   [--connections 256] [--serve-args '--max-connections 64']
    .venv/bin/python bench/serve_audit.py upload [--mib 200] [--chunked] [--serve-args '--max-bundle-bytes 268435456']

idle:   opens N TCP connections that never send a byte (then N/4 that send half a request
        head), and reports for how long /v1/health/live answers anything but 200 (polled
        every 0.25 s from fresh connections, up to --give-up seconds).
upload: PUTs one body of --mib MiB (declared Content-Length, or --chunked) to /v1/bundle and
        reports the daemon's RSS (VmRSS, /proc) before, at its peak during the upload, and
        after; the answer's status code.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from serve_load import ROOT, convert_har  # the same HAR bundle as the load benchmark (bench/ is on sys.path as a script)


def start(bundle: Path, state: Path, log: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "s2rt", "serve", str(bundle), "--state-dir", str(state), "--port", "0", *extra]
    proc = subprocess.Popen(command, env=env, stderr=open(log, "wb"))  # noqa: SIM115
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if '"ready"' in line:
                return proc, int(json.loads(line)["port"])
        if proc.poll() is not None:
            raise SystemExit(log.read_text())
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("daemon not ready")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def idle(port: int, connections: int, give_up: float) -> dict[str, float]:
    held = []
    for _ in range(connections):
        held.append(socket.create_connection(("127.0.0.1", port)))
    for _ in range(connections // 4):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n")
        held.append(s)
    t0 = time.monotonic()
    unavailable_until = None
    first_status = None
    try:
        while time.monotonic() - t0 < give_up:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/v1/health/live", timeout=5).status_code
            except httpx.HTTPError:
                status = 0
            first_status = first_status if first_status is not None else status
            if status == 200:
                unavailable_until = time.monotonic() - t0
                break
            time.sleep(0.25)
    finally:
        for s in held:
            s.close()
    without = unavailable_until if unavailable_until is not None else float("inf")
    return {"connections": len(held), "first_status": first_status or 0, "seconds_without_200": without}


def upload(pid: int, port: int, mib: int, chunked: bool) -> dict[str, float]:
    before = rss_mib(pid)
    peak = before
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mib(pid))
            time.sleep(0.02)

    def body() -> Iterator[bytes]:
        block = b"\0" * (1 << 20)
        for _ in range(mib):
            yield block

    watcher = threading.Thread(target=watch)
    watcher.start()
    headers = {"content-type": "application/octet-stream"}
    if not chunked:
        headers["content-length"] = str(mib << 20)
    try:
        status = httpx.put(f"http://127.0.0.1:{port}/v1/bundle", content=body(), headers=headers, timeout=300).status_code
    except httpx.HTTPError as e:  # the daemon may answer 413 and close before the body is sent
        status = getattr(getattr(e, "response", None), "status_code", 0) or -1
    time.sleep(1.0)
    done.set()
    watcher.join()
    after = rss_mib(pid)
    rss = {"rss_before_mib": round(before, 1), "rss_peak_mib": round(peak, 1), "rss_after_mib": round(after, 1)}
    return {"mib": mib, "status": status, **rss}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["idle", "upload"])
    p.add_argument("--connections", type=int, default=256)
    p.add_argument("--give-up", type=float, default=90.0)
    p.add_argument("--mib", type=int, default=200)
    p.add_argument("--chunked", action="store_true")
    p.add_argument("--serve-args", default="", help="extra `s2rt serve` arguments, in one string")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, port = start(convert_har(root), root / "state", root / "daemon.log", shlex.split(args.serve_args))
        try:
            audit = idle(port, args.connections, args.give_up) if args.what == "idle" else None
            result = audit or upload(proc.pid, port, args.mib, args.chunked)
        finally:
            proc.terminate()
            proc.wait(30)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
