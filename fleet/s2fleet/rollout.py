"""Staged bundle rollout through the fleet: canaries first, the rest once they hold.

    flwr run fleet/deploy my-fleet --stream -c 'mode="rollout" bundle="/srv/har-v2.s2l" out="/srv/rollout.json"'
    python -m s2fleet.rollout show /srv/rollout.json        # the outcome table again

The ServerApp (run config `mode = "rollout"`) reads the bundle file on the fleet server and
sends its bytes (an ArrayRecord: Flower cuts arrays into chunks, so a bundle up to the
daemons' 16 MiB upload cap travels) to every connected SuperNode, in two stages:

1. the canaries: the node ids in `canary-nodes` (comma-separated; `flwr supernode list`
   shows them), else `canary-fraction` of the devices, at least one, lowest node ids first;
2. once every canary deployed it, answers ready and kept its held-out accuracy, the rest.

Each device's ClientApp (`s2fleet.rollout_device`) measures the held-out accuracy of what its daemon
serves, keeps the served bundle file aside (node config `rollout-dir`), deploys the new one
(`PUT /v1/bundle`: the daemon verifies the signature under its `--trusted-key`), waits
until the daemon is ready on it and measures again. A new bundle starts from its own
initial head while the old one may serve adapters fine-tuned on the device: with
`train-epochs` > 0 the device first fine-tunes the new bundle on its stored samples (they
carry over when the input signature is the same; the daemon's gate activates the result)
so that like is compared with like. A device holds when the new accuracy is at least
`min-accuracy` and at most `max-drop` below the old; a canary must have held-out samples
to judge by, a device of the second stage without any holds once ready (the canaries
vouched for the bundle; its row says so). A canary that fails stops the
rollout: every canary that deployed is rolled back (`rollback_bundle` puts the kept file
back, verified again by the daemon; the adapter versions of the old bundle were never
touched, so its active version is served again), the rest are not touched. A device of
the second stage that does not hold is rolled back alone.

Every device gets one row: deployed, refused (the daemon's reason), unreachable (no daemon
or no reply), rolled back, not attempted. The table goes to the ServerApp's log (`flwr run
--stream`, `flwr log`) and as JSON to `out`; a failed canary stage fails the run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from s2rt.atomic import atomic_write_bytes
from s2rt.errors import BundleError
from s2rt.trust import open_trusted

from s2fleet.rollout_device import ALREADY, DEPLOY, DEPLOYED, ROLLBACK, ROLLED_BACK, UNREACHABLE

MAX_BUNDLE_BYTES = 16 << 20  # the daemon's default --max-bundle-bytes
NOT_ATTEMPTED, FAILED_CHECK = "not attempted", "did not hold"
SERVER_DEFAULTS = {
    "canary-fraction": 0.25,
    "max-drop": 0.02,
    "min-accuracy": 0.0,
    "min-nodes": 1,
    "stage-timeout": 300.0,
    "train-epochs": 0,
}


@dataclass
class Stage:
    name: str
    nodes: list[int]


def _setting(config: Any, key: str) -> float:
    value = config.get(key, SERVER_DEFAULTS[key])
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"run config {key}: expected a number, found {value!r}") from None


def read_rollout_bundle(path: str) -> tuple[bytes, str]:
    """The bundle file's bytes and digest, checked to parse and to fit the daemons' upload cap."""
    if not path:
        raise ValueError("run config bundle: missing (the bundle file to roll out, on the fleet server)")
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"run config bundle: {path}: {e.strerror}") from None
    if len(data) > MAX_BUNDLE_BYTES:
        raise ValueError(
            f"run config bundle: {path} is {len(data)} bytes; the daemons take at most {MAX_BUNDLE_BYTES} (--max-bundle-bytes)"
        )
    try:
        return data, open_trusted(data, (), name=path).digest
    except BundleError as e:
        raise ValueError(f"run config bundle: {e}") from None


def holds(outcome: dict[str, Any], max_drop: float, min_accuracy: float, evidence: bool = True) -> tuple[bool, str]:
    """Whether a device's deployment holds: deployed, ready, and its held-out accuracy kept. Without
    `evidence` (after the canaries vouched for the bundle) a device with no held-out samples holds when ready."""
    status = outcome.get("status")
    if status not in (DEPLOYED, ALREADY):
        return False, f"{status}: {outcome.get('reason', '')}"
    after = outcome.get("accuracy_after" if status == DEPLOYED else "accuracy_before")
    if after is None:
        return not evidence, "no held-out samples on the device to judge the bundle by"
    before = outcome.get("accuracy_before")
    if after < min_accuracy:
        return False, f"held-out accuracy {after:.4f} is below min-accuracy {min_accuracy:.4f}"
    if before is not None and after < before - max_drop:
        return False, f"held-out accuracy fell from {before:.4f} to {after:.4f} (max-drop {max_drop:.4f})"
    return True, ""


def _send(grid: Grid, nodes: list[int], action: str, content: RecordDict, timeout: float) -> dict[int, dict[str, Any]]:
    messages = [Message(content=content, dst_node_id=n, message_type=f"query.{action}") for n in nodes]
    outcomes: dict[int, dict[str, Any]] = {n: {"status": UNREACHABLE, "reason": f"no reply within {timeout:g} s"} for n in nodes}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = int(reply.metadata.src_node_id)
        if reply.has_error():
            outcomes[node] = {"status": UNREACHABLE, "reason": reply.error.reason.strip().splitlines()[-1][:300]}
        else:
            outcomes[node] = dict(reply.content["outcome"])
    return outcomes


def canaries(named: str, nodes: list[int], fraction: float) -> list[int]:
    """The canary stage's devices: the ids named (each must be connected), else the fraction's lowest ids."""
    if not named.strip():
        return nodes[: max(1, math.ceil(fraction * len(nodes)))]
    try:
        chosen = [int(part) for part in named.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"run config canary-nodes: expected node ids separated by commas, found {named!r}") from None
    missing = [n for n in chosen if n not in nodes]
    if missing or not chosen:
        raise ValueError(f"run config canary-nodes: {', '.join(map(str, missing)) or 'none given'}: not among the connected nodes")
    return chosen


def _wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) >= count or time.monotonic() > deadline:
            if len(nodes) < count:
                raise RuntimeError(f"rollout: {len(nodes)} devices connected within {timeout:g} s, min-nodes is {count}")
            return nodes
        time.sleep(1)


def serve(grid: Grid, context: Context) -> None:
    """The rollout's ServerApp: canaries, then the rest; each device's outcome to the log and `out`."""
    config = context.run_config
    data, digest = read_rollout_bundle(str(config.get("bundle", "")))
    out = Path(str(config.get("out", ""))) if config.get("out") else None
    fraction, max_drop, min_accuracy = (_setting(config, k) for k in ("canary-fraction", "max-drop", "min-accuracy"))
    if not 0 < fraction <= 1:
        raise ValueError(f"run config canary-fraction: expected a number in (0, 1], found {fraction}")
    timeout = _setting(config, "stage-timeout")
    nodes = _wait_for_nodes(grid, int(_setting(config, "min-nodes")), timeout)
    chosen = canaries(str(config.get("canary-nodes", "")), nodes, fraction)
    stages = [Stage("canary", chosen), Stage("rest", [n for n in nodes if n not in chosen])]
    settings = ConfigRecord(
        {
            "bundle-digest": digest,
            "bundle-sha256": hashlib.sha256(data).hexdigest(),
            "ready-timeout": timeout,
            "train-epochs": int(_setting(config, "train-epochs")),
        }
    )
    deploy = RecordDict({"bundle": ArrayRecord({"file": Array(np.frombuffer(data, np.uint8).copy())}), "config": settings})
    rollback = RecordDict({"config": settings})
    rows: dict[int, dict[str, Any]] = {n: {"stage": s.name, "status": NOT_ATTEMPTED} for s in stages for n in s.nodes}
    failed = None
    for stage in stages:
        if not stage.nodes:
            continue
        outcomes = _send(grid, stage.nodes, DEPLOY, deploy, timeout)
        bad = {}
        for node, outcome in outcomes.items():
            rows[node].update(outcome)
            ok, why = holds(outcome, max_drop, min_accuracy, evidence=stage.name == "canary")
            if not ok:
                bad[node] = why
            elif why:
                rows[node]["check"] = why
        undo = [n for n in bad if outcomes[n]["status"] == DEPLOYED]
        if stage.name == "canary" and bad:
            failed = "canary stage failed: " + "; ".join(f"device {n}: {why}" for n, why in bad.items())
            undo = [n for n in stage.nodes if outcomes[n]["status"] == DEPLOYED]
        for node in undo:
            rows[node]["check"] = bad.get(node, "rolled back with the other canaries")
        undone = _send(grid, undo, ROLLBACK, rollback, timeout) if undo else {}
        for node, outcome in undone.items():
            rows[node]["status"] = ROLLED_BACK if outcome["status"] == ROLLED_BACK else f"{FAILED_CHECK}, rollback failed"
            rows[node]["rollback"] = outcome.get("reason", "")
        if failed:
            break
    report = {"bundle-digest": digest, "bundle-bytes": len(data), "failed": failed, "devices": {str(n): r for n, r in rows.items()}}
    for line in table(report).splitlines():
        log(INFO, "%s", line)  # Flower's logger: the run's log (`flwr run --stream`, `flwr log`)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, json.dumps(report, indent=2).encode())
    if failed:
        raise RuntimeError(f"rollout of {digest[:16]}: {failed}")


def table(report: dict[str, Any]) -> str:
    """The per-device outcome table of a rollout report."""
    head = f"rollout of bundle {report['bundle-digest'][:16]} ({report['bundle-bytes']} bytes): {report['failed'] or 'done'}"
    lines = [head, f"{'device':>20}  {'stage':6}  {'outcome':26}  {'held-out before -> after':24}  why"]
    for node, row in report["devices"].items():
        before, after = row.get("accuracy_before"), row.get("accuracy_after")
        accuracy = f"{before:.3f} -> {after:.3f}" if before is not None and after is not None else ""
        why = row.get("check") or row.get("reason", "")
        lines.append(f"{node:>20}  {row['stage']:6}  {row['status']:26}  {accuracy:24}  {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m s2fleet.rollout", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the per-device outcome table of a rollout report (the run config's out)")
    show.add_argument("report", type=Path)
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text(encoding="utf-8"))
        print(table(report))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"python -m s2fleet.rollout show: {args.report}: not a rollout report ({e})", file=sys.stderr)
        return 1
    return 1 if report.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
