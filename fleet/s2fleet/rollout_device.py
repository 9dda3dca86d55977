"""A device's part in a bundle rollout (`s2fleet.rollout`): the ClientApp's query handlers.

`deploy_bundle` measures the held-out accuracy of what the daemon serves (the gate's split
of its stored samples, predicted through its API), keeps the served bundle file aside
(node config `rollout-dir`, default ~/.s2fleet/rollout/node-<id>), deploys the new one with
`PUT /v1/bundle` (the daemon verifies it under its `--trusted-key`), waits until the daemon
is ready on it, optionally fine-tunes it (`train-epochs`) and measures again.
`rollback_bundle` puts the kept file back the same way, only while the daemon still serves
the rollout's bundle. Each replies an outcome record (status, reason, figures); a refusal
or an unreachable daemon is an outcome, not an error, so the server can tabulate it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from s2rt.atomic import atomic_write_bytes
from s2rt.serve.client import Client, ClientError
from s2rt.serve.gate import held_out

from s2fleet import member

DEPLOY, ROLLBACK = "deploy_bundle", "rollback_bundle"  # query actions: message types "query.<action>"
VAL_FRACTION = 0.2  # the daemon's held-out split (s2rt.serve.fleet)
MAX_SAMPLES_READ = 5000  # the held-out check reads at most this many stored samples
DEPLOYED, ALREADY, REFUSED, UNREACHABLE, ROLLED_BACK = "deployed", "already serving", "refused", "unreachable", "rolled back"


def _rollout_dir(context: Context) -> Path:
    default = Path.home() / ".s2fleet" / "rollout" / f"node-{context.node_id}"
    return Path(str(context.node_config.get("rollout-dir", default)))


def _reply(message: Message, status: str, reason: str = "", **figures: Any) -> Message:
    outcome = ConfigRecord({"status": status, "reason": reason, **{k: v for k, v in figures.items() if v is not None}})
    return Message(content=RecordDict({"outcome": outcome}), reply_to=message)


def held_out_accuracy(daemon: Client) -> tuple[float | None, int]:
    """The served model's accuracy on the daemon's held-out samples (the gate's split) and their count."""
    model = daemon.call("GET", "/v1/model")
    dtype = np.dtype(model["input"]["dtype"])
    ids: list[int] = []
    after: int | None = 0
    while after is not None and len(ids) < MAX_SAMPLES_READ:
        page = daemon.call("GET", f"/v1/samples?after_id={after}&limit=1000")
        ids += page["ids"]
        after = page["next_after_id"]
    rows = [daemon.call("GET", f"/v1/samples/{i}") for i in ids[:MAX_SAMPLES_READ]]
    rows = [r for r in rows if r["x"] is not None]
    if not rows:
        return None, 0
    x = np.asarray([r["x"] for r in rows], dtype=dtype)
    mask = held_out(x, VAL_FRACTION)
    if not mask.any():
        return None, 0
    predicted = daemon.call("POST", "/v1/predict", {"x": x[mask].tolist()})["classes"]
    y = np.asarray([r["y"] for r in rows])[mask]
    return float(np.mean(np.asarray(predicted) == y)), int(mask.sum())


def _wait_ready(daemon: Client, digest: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = daemon.request("GET", "/v1/health/ready")
        ready = json.loads(body) if body else {}
        if status == 200 and ready.get("ready") and ready.get("bundle_digest") == digest:
            return
        if time.monotonic() > deadline:
            raise ClientError(f"not ready on bundle {digest[:16]} within {timeout:g} s (last: {status} {ready})")
        time.sleep(0.2)


def _fine_tune(daemon: Client, epochs: int, timeout: float) -> None:
    """Fine-tune the served bundle on the stored samples; the daemon's gate decides whether the result is served."""
    job = daemon.call("POST", "/v1/jobs", {"epochs": epochs})
    deadline = time.monotonic() + timeout
    while job["state"] == "running":
        if time.monotonic() > deadline:
            daemon.call("POST", f"/v1/jobs/{job['id']}/cancel")
            raise ClientError(f"fine-tuning job {job['id']} did not finish within {timeout:g} s; cancelled")
        time.sleep(0.1)
        job = daemon.call("GET", f"/v1/jobs/{job['id']}")


def deploy_bundle(message: Message, context: Context) -> Message:
    """Deploy the bundle the message carries to this device's daemon; reply the outcome and the accuracy before and after."""
    config = message.content["config"]
    data = message.content["bundle"]["file"].numpy().tobytes()
    digest, timeout = str(config["bundle-digest"]), float(config.get("ready-timeout", 120))
    if hashlib.sha256(data).hexdigest() != str(config["bundle-sha256"]):
        return _reply(message, REFUSED, "the bundle bytes arrived altered (SHA-256 differs from the server's)")
    try:
        daemon = member.connect(dict(context.node_config))
        before = str(daemon.call("GET", "/v1/model")["bundle_digest"])
    except (ClientError, member.RoundRefused) as e:
        return _reply(message, UNREACHABLE, str(e))
    try:
        accuracy_before, _ = held_out_accuracy(daemon)
        if before == digest:
            return _reply(message, ALREADY, "the daemon already serves this bundle", before=before, accuracy_before=accuracy_before)
        folder = _rollout_dir(context)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / "previous.s2l", daemon.call("GET", "/v1/bundle"))
        atomic_write_bytes(folder / "previous.json", json.dumps({"digest": before, "replaced_by": digest}).encode())
        try:
            daemon.call("PUT", "/v1/bundle", raw=data)
        except ClientError as e:
            status = UNREACHABLE if str(e).startswith("cannot reach") else REFUSED
            return _reply(message, status, str(e), before=before, accuracy_before=accuracy_before)
        _wait_ready(daemon, digest, timeout)
        if int(config.get("train-epochs", 0)) > 0:
            _fine_tune(daemon, int(config["train-epochs"]), timeout)
        accuracy_after, n = held_out_accuracy(daemon)
    except ClientError as e:
        return _reply(message, UNREACHABLE, str(e), before=before)
    return _reply(message, DEPLOYED, "", before=before, accuracy_before=accuracy_before, accuracy_after=accuracy_after, held_out=n)


def rollback_bundle(message: Message, context: Context) -> Message:
    """Put back the bundle this device served before the rollout's bundle (kept by `deploy_bundle`)."""
    config = message.content["config"]
    digest, timeout = str(config["bundle-digest"]), float(config.get("ready-timeout", 120))
    folder = _rollout_dir(context)
    try:
        kept = json.loads((folder / "previous.json").read_text(encoding="utf-8"))
        data = (folder / "previous.s2l").read_bytes()
    except (OSError, ValueError) as e:
        return _reply(message, REFUSED, f"nothing to roll back to in {folder}: {e}")
    try:
        daemon = member.connect(dict(context.node_config))
        serving = str(daemon.call("GET", "/v1/model")["bundle_digest"])
        if serving != digest or kept.get("replaced_by") != digest:
            return _reply(message, REFUSED, f"the daemon serves {serving[:16]}, not the rollout's {digest[:16]}: left as it is")
        daemon.call("PUT", "/v1/bundle", raw=data)
        _wait_ready(daemon, str(kept["digest"]), timeout)
    except (ClientError, member.RoundRefused) as e:
        return _reply(message, UNREACHABLE, f"rollback failed: {e}")
    return _reply(message, ROLLED_BACK, f"serves {str(kept['digest'])[:16]} again", before=str(kept["digest"]))
