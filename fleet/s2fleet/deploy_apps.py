"""The Flower apps for a real deployment (SuperLink + SuperNodes, `flwr run`).

The simulation (`s2fleet.simulate`) hands the apps Python objects; a deployment can only
hand them text: the ServerApp reads its settings from the run config (`flwr run -c`,
defaults in fleet/deploy/pyproject.toml), each ClientApp from its SuperNode's node config
(`flower-supernode --node-config 'bundle="..." data="..."'`). Paths are on the machine
of the process that reads them: the ServerApp's on the fleet server, each ClientApp's on
its device.

Run config (server), mode "train" (the default; mode "rollout" is `s2fleet.rollout`'s):
    bundle          the bundle the fleet trains (its digest is sent with every round)
    fleet-key       the fleet's Ed25519 signing key (PEM, `s2conv keygen`): every round's
                    global version goes out signed with it (`s2fleet.signing`)
    rounds          training rounds
    local-epochs    epochs each device trains per round
    learning-rate   the devices' learning rate
    aggregation     fedavg | exact | damped
    step            the server step size for damped
    min-nodes       devices a round (and the delivery after it) waits for, at most round-timeout
                    seconds: fewer connected by then stops the run (a device that dropped out
                    no longer counts)
    min-replies     updates a round needs: with fewer (devices refused, dropped out or timed
                    out), the run stops there and `out` keeps the last completed round's version
    round-timeout   seconds a round waits for the devices' replies
    start           adapters (the default: round 1 trains from the bundle's head) or ridge: round 1
                    solves the head from the devices' ridge sums (`s2fleet.ridge`), signed and sent
                    like every round's version
    ridge-kappa     the ridge targets' margin (default s2fleet.ridge.KAPPA)
    ridge-lambda    "auto" (the default: chosen by the devices' held-out sums) or a number
    logit-adjustment  devices train on z + tau log(local class prior) (0: off, the default)
    out             where the global adapters go (.npz, `A.l`/`B.l` per tap, plus
                    `initial.A.l`/`initial.B.l`), rewritten after every round; a JSON report
                    beside it (`.json`): per round the test accuracy and each device's outcome
                    (its update or why not, whether its gate activated the global version), refusals,
                    and with start = ridge the lambda round 1 used and the held-out error behind it
    test            optional test samples (.npz x, y or .csv) scored after each round

Node config (device): a device's ClientApp drives its daemon (`s2fleet.member`) unless its
node config names a `data` file, then it trains in the ClientApp process itself:
    daemon-url, daemon-uds, daemon-token-file, daemon-job-timeout   the daemon (see `s2fleet.member`)
    rollout-dir     where a bundle rollout keeps the bundle it replaced (`s2fleet.rollout`)
  or, without a daemon:
    bundle          the bundle this device serves; a round for another is refused
    data            this device's own samples (.npz x, y or .csv); they never leave the device
    adapters        optional: where each round's global adapters are stored (s2rt state file)
    partition-id    optional, seeds the device's shuffling
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from s2rt.bundle.signing import SigningKey
from s2rt.data import Samples, load_samples
from s2rt.errors import S2LError
from s2rt.session import Model
from s2rt.state import save_adapters

from s2fleet import member, ridge, rollout, rollout_device
from s2fleet.aggregate import Adapters, Aggregation
from s2fleet.apps import EXAMPLES, DeviceData, RidgeStart, _reason, from_record, to_record
from s2fleet.apps import client_app as make_client_app
from s2fleet.device import global_accuracy
from s2fleet.signing import GlobalSigner, SignedAdapterStrategy

SERVER_KEYS = ("bundle", "fleet-key", "rounds", "local-epochs", "learning-rate", "aggregation", "step", "min-nodes", "out")
DEVICE_KEYS = ("bundle", "data")


def _require(config: Any, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in config or config[k] in ("", None)]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)} (expected keys {', '.join(keys)})")


def _aggregation(value: object) -> Aggregation:
    try:
        return Aggregation(str(value))
    except ValueError:
        raise ValueError(f"run config aggregation: expected one of {', '.join(a.value for a in Aggregation)}, found {value!r}") from None


def labelled(path: str | os.PathLike[str], model: Model) -> Samples:
    """`x`, `y` from an .npz or .csv, checked against the bundle as `s2rt train` checks them."""
    return load_samples(path, model.bundle.input, model.bundle.head.num_outputs, require_labels=True)


# -- device side -----------------------------------------------------------------------
def _device_load(context: Context) -> tuple[Model, Samples]:
    node = context.node_config
    _require(node, DEVICE_KEYS, "node config (flower-supernode --node-config)")
    model = Model.open(str(node["bundle"]))
    return model, labelled(str(node["data"]), model)


_in_process = make_client_app(DeviceData(_device_load))


def trains_in_process(context: Context) -> bool:
    """A device with a `data` file in its node config trains in the ClientApp; every other drives its daemon."""
    return "data" in context.node_config


client_app = ClientApp()


@client_app.train()
def train(message: Message, context: Context) -> Message:
    if trains_in_process(context):
        return _in_process(message, context)
    return member.train_round(message, context)


@client_app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    return receive(message, context) if trains_in_process(context) else member.receive_round(message, context)


client_app.query(rollout_device.DEPLOY)(rollout_device.deploy_bundle)
client_app.query(rollout_device.ROLLBACK)(rollout_device.rollback_bundle)


def receive(message: Message, context: Context) -> Message:
    """The global adapters after a round: scored on this device's samples and, with node
    config `adapters`, stored there as an s2rt adapter state file (the device's copy of
    the current global version)."""
    model, samples = _device_load(context)
    config = message.content["config"]
    digest = str(config["bundle-digest"])
    if digest != model.bundle.digest:
        raise RuntimeError(f"refused: the version is for bundle {digest[:16]}, this device serves {model.bundle.digest[:16]}")
    adapters = from_record(message.content["arrays"], len(model.bundle.taps))
    accuracy = global_accuracy(model, adapters, samples.x, np.asarray(samples.y))
    target = str(context.node_config.get("adapters", ""))
    if target:
        save_adapters(target, adapters, model.bundle, source="fleet", server_round=int(config["server-round"]), local_accuracy=accuracy)
    metrics = MetricRecord({EXAMPLES: len(samples.x), "local-accuracy": accuracy})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=message)


# -- server side -----------------------------------------------------------------------
def adapter_arrays(adapters: Adapters, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for t, (a, b) in enumerate(adapters):
        out[f"{prefix}A.{t}"], out[f"{prefix}B.{t}"] = a, b
    return out


def _write(path: Path, initial: Adapters, final: Adapters, report: dict[str, Any]) -> None:
    """The npz and its JSON report, each written aside then renamed: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    arrays = {**adapter_arrays(final), **adapter_arrays(initial, "initial.")}
    np.savez(partial, **arrays)  # type: ignore[arg-type]  # numpy stubs mistake **arrays for allow_pickle
    report_path, report_partial = path.with_suffix(".json"), path.with_suffix(".json.partial")
    report_partial.write_text(json.dumps(report, indent=2))
    os.replace(report_partial, report_path)
    os.replace(partial, path)


class RoundFailed(RuntimeError):
    """Too few devices replied with an update: the run stops, the last completed round's version stays."""


class DeployStrategy(SignedAdapterStrategy):
    """Signed rounds that need `min_replies` updates, with each device's outcome per round (`devices`)."""

    def __init__(self, signer: GlobalSigner, *args: Any, min_replies: int = 1, node_timeout: float = 600.0, **kwargs: Any) -> None:
        super().__init__(signer, *args, **kwargs)
        self.min_replies, self.node_timeout = min_replies, node_timeout
        self.devices: dict[int, dict[str, dict[str, Any]]] = {}  # round -> node id -> outcome
        self._sent: dict[tuple[int, str], list[int]] = {}

    def _await_nodes(self, grid: Grid, server_round: int) -> None:
        """Flower waits for min_available_nodes without end: here a round fails after `node_timeout` seconds."""
        deadline = time.monotonic() + self.node_timeout
        while len(list(grid.get_node_ids())) < self.min_available_nodes:
            if time.monotonic() > deadline:
                connected, needed = len(list(grid.get_node_ids())), self.min_available_nodes
                raise RoundFailed(
                    f"round {server_round}: {connected} devices connected after {self.node_timeout:g} s, min-nodes is {needed}"
                )
            time.sleep(1)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._await_nodes(grid, server_round)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sent[server_round, "train"] = [m.metadata.dst_node_id for m in messages]
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._await_nodes(grid, server_round)
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self._sent[server_round, "evaluate"] = [m.metadata.dst_node_id for m in messages]
        return messages

    def _outcomes(self, server_round: int, stage: str, replies: list[Message]) -> dict[str, dict[str, Any]]:
        devices = self.devices.setdefault(server_round, {})
        for sent in self._sent.get((server_round, stage), []):
            devices.setdefault(str(sent), {})[stage] = "no reply (dropped out or timed out)"
        for msg in replies:
            node = str(msg.metadata.src_node_id)
            if msg.has_error():
                devices.setdefault(node, {})[stage] = _reason(msg.error.reason)
            else:
                devices.setdefault(node, {})[stage] = dict(msg.content["metrics"]) | (
                    {"gate": str(msg.content["gate"]["gate"])} if "gate" in msg.content else {}
                )
        return devices

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        devices = self._outcomes(server_round, "train", replies)
        updates = sum(1 for m in replies if not m.has_error())
        if updates < self.min_replies:
            why = "; ".join(f"device {node}: {o['train']}" for node, o in devices.items() if not isinstance(o.get("train"), dict))
            raise RoundFailed(
                f"round {server_round}: {updates} of {len(devices)} devices sent an update, min-replies is {self.min_replies} ({why})"
            )
        return super().aggregate_train(server_round, replies)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        devices = self._outcomes(server_round, "evaluate", list(replies))
        received = [o["evaluate"] for o in devices.values() if isinstance(o.get("evaluate"), dict)]
        if not received:
            return None
        scored = [r["local-accuracy"] for r in received if "local-accuracy" in r]
        metrics = {"devices": len(received), "activated": sum(int(r.get("global-activated", 0)) for r in received)}
        return MetricRecord(metrics | ({"local-accuracy": sum(scored) / len(scored)} if scored else {}))


def _ridge_start(config: Any, model: Model) -> RidgeStart | None:
    start = str(config.get("start", "adapters"))
    if start not in ("adapters", "ridge"):
        raise ValueError(f"run config start: expected adapters or ridge, found {start!r}")
    if start == "adapters":
        return None
    kappa, lam = float(config.get("ridge-kappa", ridge.KAPPA)), str(config.get("ridge-lambda", "auto"))
    if not 0 < kappa < float("inf"):
        raise ValueError(f"run config ridge-kappa: expected a number > 0, found {kappa}")
    try:
        chosen = None if lam == "auto" else float(lam)
    except ValueError:
        raise ValueError(f"run config ridge-lambda: expected auto or a number > 0, found {lam!r}") from None
    if chosen is not None and not 0 < chosen < float("inf"):
        raise ValueError(f"run config ridge-lambda: expected auto or a number > 0, found {lam!r}")
    return RidgeStart(model.head.tap_sizes, model.head.scaling, kappa, chosen)  # type: ignore[attr-defined]


def _fleet_key(path: str) -> SigningKey:
    try:
        return SigningKey.load(path)
    except S2LError as e:
        raise ValueError(f"run config fleet-key: {e}") from None


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    if str(context.run_config.get("mode", "train")) == "rollout":
        rollout.serve(grid, context)
    else:
        train_fleet(grid, context)


def train_fleet(grid: Grid, context: Context) -> None:
    config = context.run_config
    _require(config, SERVER_KEYS, "run config (flwr run --run-config)")
    model = Model.open(str(config["bundle"]))
    model.reset_adapters()
    initial: Adapters = model.head.per_tap()  # type: ignore[attr-defined]
    nodes = int(config["min-nodes"])
    key = _fleet_key(str(config["fleet-key"]))
    strategy = DeployStrategy(
        GlobalSigner(model.bundle, key, run_id=context.run_id),
        _aggregation(config["aggregation"]),
        model.bundle.head.rank,
        len(model.bundle.taps),
        step=float(config["step"]),
        ridge_start=_ridge_start(config, model),
        min_replies=int(config.get("min-replies", 1)),
        node_timeout=float(config.get("round-timeout", 600)),
        min_train_nodes=nodes,
        min_available_nodes=nodes,
        fraction_evaluate=1.0,  # every device receives each round's global adapters
        min_evaluate_nodes=nodes,
    )
    curve: list[float] = []
    scored = str(config.get("test", ""))
    test = labelled(scored, model) if scored else None
    out = Path(str(config["out"]))
    report: dict[str, Any] = {
        "rounds": int(config["rounds"]),
        "completed": 0,
        "accuracy": curve,
        "devices": strategy.devices,
        "refused": strategy.refused,
        "failed": None,
        "bundle-digest": model.bundle.digest,
        "signed-by": key.key_id,
        "ridge": None,
    }

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """After each round (and before the first): score the global version and write it down."""
        final = from_record(arrays, strategy.taps)
        if test is not None:
            curve.append(global_accuracy(model, final, test.x, np.asarray(test.y)))
        report["completed"] = server_round
        report["ridge"] = strategy.ridge_choice
        _write(out, initial, final, report)
        return MetricRecord({"accuracy": curve[-1]}) if test is not None else None

    settings = ConfigRecord(
        {
            "bundle-digest": model.bundle.digest,
            "local-epochs": int(config["local-epochs"]),
            "learning-rate": float(config["learning-rate"]),
            "logit-adjustment": float(config.get("logit-adjustment", 0.0)),
        }
    )
    strategy.current = initial
    try:
        strategy.start(
            grid=grid,
            initial_arrays=to_record(initial),
            num_rounds=int(config["rounds"]),
            timeout=float(config.get("round-timeout", 600)),
            train_config=settings,
            evaluate_config=settings,
            evaluate_fn=evaluate,
        )
    except RoundFailed as e:
        report["failed"] = str(e)
        done = strategy.current if strategy.current is not None else initial
        _write(out, initial, done, report)
        raise
