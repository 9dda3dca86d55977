"""onnxruntime-training as an optional peer, trained in its own venv through ortt_worker.py.

onnxruntime-training replaces the plain onnxruntime package and wants onnx <= 1.17, so it
lives in bench/.venv-ortt (`make bench-ortt-setup`). Without that venv these methods are
skipped with a printed note. The peer stays up for the whole profile, so its runs are
interleaved with everyone else's like any other method.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from s2lbench.methods import ADAPTER_GRID, FT_GRID, Job, Method, RunResult
from s2lbench.workloads import ROOT, Data

VENV = ROOT / "bench" / ".venv-ortt"
WORKER = Path(__file__).with_name("ortt_worker.py")


def python() -> Path | None:
    """The peer venv's interpreter, or None when it is not set up."""
    exe = VENV / "bin" / "python"
    return exe if exe.exists() else None


class OrttPeer:
    """One ortt_worker.py process; `prepare` once per (workload, selection), then `run`."""

    def __init__(self, env: dict[str, str]) -> None:
        exe = python()
        if exe is None:
            raise FileNotFoundError(f"{VENV} does not exist; create it with `make bench-ortt-setup`")
        self.proc = subprocess.Popen(
            [str(exe), str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        self.data_dir = Path(tempfile.mkdtemp(prefix="s2lbench-ortt-data-"))
        self.files: dict[int, tuple[Data, str]] = {}
        self.prepared: dict[str, int] = {}

    def request(self, **payload: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(payload) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the onnxruntime-training peer exited")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"onnxruntime-training: {_last_sentence(reply['error'])}")
        return reply

    def data_file(self, data: Data) -> str:
        """The data as an npz the peer can read (written once per array set)."""
        known = self.files.get(id(data))
        if known is not None and known[0] is data:
            return known[1]
        path = self.data_dir / f"{len(self.files)}.npz"
        np.savez(path, x=data.x, y=data.y)
        self.files[id(data)] = (data, str(path))
        return str(path)

    def run(self, job: Job, which: str) -> RunResult:
        key = f"{job.workload.name}/{which}"
        if key not in self.prepared:
            threads = job.profile.threads
            self.prepared[key] = self.request(cmd="prepare", key=key, onnx=str(job.workload.onnx), which=which, threads=threads)[
                "trainable"
            ]
        reply = self.request(
            cmd="run",
            key=key,
            train=self.data_file(job.train),
            eval=self.data_file(job.eval),
            epochs=job.epochs,
            batch_size=job.batch_size,
            lr=job.lr,
            seed=job.seed,
        )
        return RunResult(reply["seconds"], reply["accuracy"], reply["loss"], int(reply["trainable"]))

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError, BrokenPipeError, json.JSONDecodeError):
                self.request(cmd="quit")
            self.proc.wait(timeout=10)


def _last_sentence(error: str) -> str:
    """onnxruntime's C++ errors start with a long source location; the reason is at the end."""
    tail = error.rsplit(". ", 1)[-1] if len(error) > 200 else error
    return tail.strip()


def _runner(which: str):
    def run(job: Job, context: Any) -> RunResult:
        return context.ortt().run(job, which)

    return run


def methods() -> list[Method]:
    if python() is None:
        print(f"note: onnxruntime-training skipped: {VENV.relative_to(ROOT)} is absent (make bench-ortt-setup creates it)", file=sys.stderr)
        return []
    if os.environ.get("S2LBENCH_NO_ORTT"):
        return []
    return [
        Method("ortt-ft-all", "FT-All (onnxruntime-training)", "ortt", FT_GRID, _runner("all"), tune_as="torch-ft-all"),
        Method("ortt-ft-last", "FT-Last (onnxruntime-training)", "ortt", ADAPTER_GRID, _runner("last"), tune_as="torch-ft-last"),
    ]
