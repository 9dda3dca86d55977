"""Drive real `s2rt serve` processes in tests: start, wait for the ready log line, stop, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0


class Daemon:
    """One `python -m s2rt serve …` process; its JSON log goes to a file we can read."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.log_path = args, log
        environment = {**os.environ, "PYTHONPATH": str(ROOT / "runtime"), "OMP_NUM_THREADS": "1", **(env or {})}
        self.log_file = open(log, "ab")  # noqa: SIM115  # closed in stop()/kill()
        self.offset = log.stat().st_size
        command = [sys.executable, "-m", "s2rt", "serve", *args]
        self.proc = subprocess.Popen(command, env=environment, stderr=self.log_file, stdout=self.log_file)
        self.ready = self._wait_ready()
        self.uds = self.ready.get("uds")
        if self.uds:
            self.url = "http://daemon"
            self.client = httpx.Client(base_url=self.url, transport=httpx.HTTPTransport(uds=self.uds), timeout=30)
        else:
            self.url = f"http://127.0.0.1:{self.ready['port']}"
            self.client = httpx.Client(base_url=self.url, timeout=30)

    def events(self) -> list[dict[str, Any]]:
        out = []
        with open(self.log_path, "rb") as f:
            f.seek(self.offset)
            for line in f.read().decode(errors="replace").splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    out.append({"msg": line})
        return out

    def _wait_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            ready = [e for e in self.events() if e.get("event") == "ready"]
            if ready:
                return ready[0]
            if self.proc.poll() is not None:
                raise RuntimeError(f"s2rt serve exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"s2rt serve not ready after {READY_TIMEOUT} s:\n{self.log_path.read_text()}")

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int:
        """Send `sig` (default SIGTERM) and return the exit status."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.log_file.close()
        return code

    def kill(self) -> None:
        """kill -9: no handler runs, nothing is flushed by the daemon itself."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.log_file.close()  # closing twice is harmless


def wait_job(client: httpx.Client, job_id: int, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still running after {timeout} s")


def all_sample_ids(client: httpx.Client) -> list[int]:
    ids: list[int] = []
    after = 0
    while True:
        page = client.get("/v1/samples", params={"after_id": after, "limit": 10_000}).json()
        ids += page["ids"]
        if page["next_after_id"] is None:
            return ids
        after = page["next_after_id"]
