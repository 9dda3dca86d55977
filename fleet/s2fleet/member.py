"""A ClientApp for a device that already runs `s2rt serve`: the round trains inside the daemon.

The daemon keeps the device's samples, Skip-Cache and adapter versions; this app only
drives its API, so nothing is copied and the samples never leave the daemon. A round:

1. `GET /v1/model`: refuse the round if its bundle digest is not the one the daemon serves;
2. `POST /v1/adapters?activate=true`: import the global version, signed by the fleet key
   (`s2fleet.signing`); the daemon verifies it (`--fleet-key`) and activates it only if
   its accuracy gate accepts it on the device's held-out samples;
3. `POST /v1/jobs` with `start_from` = that version and `commit: always`, then wait;
4. `GET /v1/adapters/{v}/download`: reply with the trained adapters and the job's example
   count (the samples it trained on; the held-out ones judge the gate and are not counted).

A round whose task is `statistics` (the closed-form first round, `s2fleet.ridge`) only
checks the bundle and replies with the daemon's ridge sums (`POST /v1/fleet/statistics`:
the training samples' and, apart, the held-out ones', from the Skip-Cache); the round's
`logit-adjustment`, if any, goes to each job as `logit_adjustment`.

After each round (the evaluate message) the round's aggregate, signed, is imported the
same way (step 2), so the last round's global version reaches the daemon too; the reply
says whether the device's gate activated it, and why not. The next round's train message
carries the same signed file, which the daemon recognises and does not store twice.

The daemon's address comes from the SuperNode's node config:
`daemon-url` (default http://127.0.0.1:8470) or `daemon-uds`, and `daemon-token-file`
(bearer token; control endpoints need it on TCP), `daemon-job-timeout` (seconds, default 600).
A refusal or failure is raised: Flower returns it to the server as an error reply, which
the strategy logs and leaves out of the aggregate.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from s2rt.serve.client import Client, ClientError
from s2rt.serve.fleet_signing import KEY_HEADER, SEQUENCE_HEADER, SIGNATURE_HEADER

from s2fleet import ridge
from s2fleet.aggregate import Adapters
from s2fleet.apps import EXAMPLES, statistics_record, to_record
from s2fleet.signing import GLOBAL_FILE, GLOBAL_KEY, GLOBAL_ROUND, GLOBAL_SEQUENCE, GLOBAL_SIGNATURE

DEFAULT_URL = "http://127.0.0.1:8470"
POLL_SECONDS = (0.02, 0.5)  # first and longest wait between job polls: a short job is seen at once, a long one polled rarely
TASKS = ("adapters", "statistics")  # as the in-process ClientApp's (s2fleet.apps.TASKS)
TRAINED = ("succeeded", "rejected")  # rejected: the gate kept the active version, the trained one is stored anyway


class RoundRefused(RuntimeError):
    """This device does not take part in the round; the message starts with "refused: "."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"refused: {reason}")


def connect(node_config: dict[str, Any]) -> Client:
    token = None
    if "daemon-token-file" in node_config:
        path = Path(str(node_config["daemon-token-file"]))
        try:
            token = next((t for t in path.read_text(encoding="utf-8").split() if not t.startswith("#")), None)
        except OSError as e:
            raise RoundRefused(f"daemon-token-file {path}: {e.strerror}") from None
    uds = node_config.get("daemon-uds")
    return Client(str(node_config.get("daemon-url", DEFAULT_URL)), str(uds) if uds else None, token)


def train_round(message: Message, context: Context) -> Message:
    """One round on the daemon: check the bundle, import the signed global version, train from it, reply
    (or, for a round whose task is `statistics`, reply with the daemon's ridge sums)."""
    daemon = connect(dict(context.node_config))
    config = message.content["config"]
    task = str(config.get("task", "adapters"))
    if task not in TASKS:
        raise RoundRefused(f"unknown task {task!r}; this device knows {', '.join(TASKS)}")
    if task == "statistics":
        return Message(content=_statistics(daemon, config), reply_to=message)
    try:
        taps = _check_bundle(daemon, str(config["bundle-digest"]))
        imported = _import(daemon, config)
        job = _train(daemon, imported["version"], config, float(context.node_config.get("daemon-job-timeout", 600)))
        adapters = _download(daemon, job["result"]["version"], taps)
    except ClientError as e:
        raise RoundRefused(str(e)) from None
    metrics = MetricRecord({EXAMPLES: int(job["examples"]), "global-activated": int(imported["activated"])})
    return Message(content=RecordDict({"arrays": to_record(adapters), "metrics": metrics}), reply_to=message)


def receive_round(message: Message, context: Context) -> Message:
    """The round's aggregate: import it (signed, through the gate); reply whether it is now served."""
    daemon = connect(dict(context.node_config))
    config = message.content["config"]
    try:
        _check_bundle(daemon, str(config["bundle-digest"]))
        imported = _import(daemon, config)
        held_out = imported.get("val_accuracy")
    except ClientError as e:
        raise RoundRefused(str(e)) from None
    metrics: dict[str, int | float] = {
        "global-version": int(imported["version"]),
        "global-round": int(config.get(GLOBAL_ROUND, -1)),
        "global-activated": int(imported["activated"]),
        "active-version": int(imported["active"]),
    }
    if held_out is not None:
        metrics["local-accuracy"] = float(held_out)
    reason = ConfigRecord({"gate": str(imported["reason"])})
    return Message(content=RecordDict({"metrics": MetricRecord(metrics), "gate": reason}), reply_to=message)


def _statistics(daemon: Client, config: Any) -> RecordDict:
    """The daemon's ridge sums of its stored samples (POST /v1/fleet/statistics), training and held-out apart."""
    try:
        _check_bundle(daemon, str(config["bundle-digest"]))
        data = daemon.call("POST", "/v1/fleet/statistics", {"kappa": float(config.get("ridge-kappa", ridge.KAPPA))})
    except ClientError as e:
        raise RoundRefused(str(e)) from None
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        train, held = (
            ridge.Statistics(f[p + "gram"], f[p + "cross"], float(f[p + "targets"]), int(f[p + "examples"])) for p in ("", "held_out.")
        )
    return statistics_record(train, held)


def _check_bundle(daemon: Client, digest: str) -> int:
    model = daemon.call("GET", "/v1/model")
    if model["bundle_digest"] != digest:
        # no apostrophe: the server cuts a device's reason at the first quote (s2fleet.apps._reason)
        raise RoundRefused(f"the round is for bundle {digest[:16]}, the daemon on this device serves {model['bundle_digest'][:16]}")
    return len(model["taps"])


def _import(daemon: Client, config: Any) -> dict[str, Any]:
    if GLOBAL_FILE not in config:
        raise RoundRefused("the round carries no signed global version (the server must sign it: s2fleet.signing)")
    headers = {
        SIGNATURE_HEADER: str(config[GLOBAL_SIGNATURE]),
        KEY_HEADER: str(config[GLOBAL_KEY]),
        SEQUENCE_HEADER: str(config.get(GLOBAL_SEQUENCE, "")),
    }
    result: dict[str, Any] = daemon.call("POST", "/v1/adapters?activate=true", raw=bytes(config[GLOBAL_FILE]), headers=headers)
    return result


def _train(daemon: Client, version: int, config: Any, timeout: float) -> dict[str, Any]:
    options = {
        "start_from": version,
        "commit": "always",
        "new_classes": False,  # the global adapters hold the bundle's classes; classes learned on this device stay here
        "epochs": int(config["local-epochs"]),
        "seed": int(config.get("server-round", 0)),
    }
    if "learning-rate" in config:
        options["learning_rate"] = float(config["learning-rate"])
    if float(config.get("logit-adjustment", 0.0)):
        options["logit_adjustment"] = float(config["logit-adjustment"])
    job: dict[str, Any] = daemon.call("POST", "/v1/jobs", options)
    deadline, wait = time.monotonic() + timeout, POLL_SECONDS[0]
    while job["state"] == "running":
        if time.monotonic() > deadline:
            daemon.call("POST", f"/v1/jobs/{job['id']}/cancel")
            raise RoundRefused(f"job {job['id']} did not finish within daemon-job-timeout {timeout:g} s; cancelled")
        time.sleep(wait)
        wait = min(2 * wait, POLL_SECONDS[1])
        job = daemon.call("GET", f"/v1/jobs/{job['id']}")
    if job["state"] not in TRAINED or "version" not in (job["result"] or {}):
        raise RoundRefused(f"job {job['id']} {job['state']}: {job['message']}")
    return job


def _download(daemon: Client, version: int, taps: int) -> Adapters:
    data = daemon.call("GET", f"/v1/adapters/{version}/download")
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        return [(f[f"A.{t}"], f[f"B.{t}"]) for t in range(taps)]


app = ClientApp()
app.train()(train_round)
app.evaluate()(receive_round)
