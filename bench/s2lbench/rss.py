"""Peak resident memory per method: one fine-tuning run in a fresh process, read with ru_maxrss.

The process is forked by a small launcher (see LAUNCHER), so it does not inherit the
benchmark's own high-water mark.

The child imports only what its method needs (an s2rt method reads a bundle the parent
wrote and never imports torch, onnx or s2conv), loads the data and the weights, notes
ru_maxrss ("baseline": interpreter, libraries, data, weights), runs the method once
(building its session or model, then fine-tuning) and notes it again ("peak").
ru_maxrss is the process's high-water mark, so peak - baseline is what the run added.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from s2lbench.methods import Job
from s2lbench.profiles import PROFILES, Profile
from s2lbench.workloads import load

RUN_PY = Path(__file__).resolve().parents[1] / "run.py"

# ru_maxrss survives fork and exec: a child forked from this (large) process would start
# at its high-water mark. A small launcher process forks the measured child instead.
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


class ChildContext:
    """The Context methods need, without the converter: the bundle comes from a file."""

    def __init__(self, workload: Any, bundle_path: str | None, matched_rank: int) -> None:
        self.workload, self._bundle_path, self._rank = workload, bundle_path, matched_rank

    def bundle(self, seed: int) -> Any:
        from s2rt.bundle import read_bundle

        assert self._bundle_path is not None
        return read_bundle(self._bundle_path)

    def torch_net(self) -> Any:
        from s2lbench.onnxnet import load_onnx_net

        return load_onnx_net(str(self.workload.onnx))

    def matched_lora_rank(self, seed: int = 0) -> int:
        return self._rank


def child(args: Any) -> int:
    """`run.py rss ...`: one run of one method; prints {"baseline_mb", "peak_mb"} as JSON."""
    from s2lbench.methods import registry

    profile = PROFILES[args.profile]
    method = registry()[args.method]
    if method.family in ("torch", "peft"):
        from s2lbench.profiles import apply_torch

        apply_torch(profile)
    workload = load(args.workload).subset(args.max_ft, args.max_test)
    context = ChildContext(workload, args.bundle, args.matched_rank)
    if method.family == "s2rt":
        import onnxruntime  # noqa: F401 - the baseline holds the libraries, not the session

        context.bundle(args.seed)
    else:
        import peft  # noqa: F401

        context.torch_net()
    job = Job(workload, workload.ft, workload.test, args.epochs, args.batch_size, args.lr, args.seed, profile)
    baseline = max_rss_mb()
    method.run(job, context)
    print(json.dumps({"baseline_mb": baseline, "peak_mb": max_rss_mb(), "torch_imported": "torch" in sys.modules}))
    return 0


def measure(
    method: str, job: Job, profile: Profile, bundle_path: str | None, matched_rank: int, max_ft: int | None, max_test: int | None
) -> dict[str, Any]:
    """Run `child` in a fresh process with the profile's environment."""
    cmd = [sys.executable, "-c", LAUNCHER, sys.executable, str(RUN_PY), "rss", "--profile", profile.name]
    cmd += ["--workload", job.workload.name, "--method", method]
    cmd += ["--lr", str(job.lr), "--epochs", str(job.epochs), "--batch-size", str(job.batch_size), "--seed", str(job.seed)]
    cmd += ["--matched-rank", str(matched_rank)]
    if bundle_path:
        cmd += ["--bundle", bundle_path]
    if max_ft:
        cmd += ["--max-ft", str(max_ft)]
    if max_test:
        cmd += ["--max-test", str(max_test)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=profile.child_env(), timeout=600)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])
