"""The Flower apps for a real deployment (SuperLink + SuperNodes, `flwr run`).

The simulation (`s2fleet.simulate`) hands the apps Python objects; a deployment can only
hand them text: the ServerApp reads its settings from the run config (`flwr run -c`,
defaults in fleet/deploy/pyproject.toml), each ClientApp from its SuperNode's node config
(`flower-supernode --node-config 'bundle="..." data="..."'`). Paths are on the machine
of the process that reads them: the ServerApp's on the fleet server, each ClientApp's on
its device.

Run config (server):
    bundle          the bundle the fleet trains (its digest is sent with every round)
    rounds          training rounds
    local-epochs    epochs each device trains per round
    learning-rate   the devices' learning rate
    aggregation     fedavg | exact | damped
    step            the server step size for damped
    min-nodes       devices a round waits for
    out             where the final global adapters go (.npz, `A.l`/`B.l` per tap, plus
                    `initial.A.l`/`initial.B.l`); a JSON report beside it (`.json`): the
                    test accuracy per round, the devices' mean accuracy on their own
                    samples per round, refusals
    test            optional test samples (.npz x, y or .csv) scored after each round

Node config (device):
    bundle          the bundle this device serves; a round for another is refused
    data            this device's own samples (.npz x, y or .csv); they never leave the device
    adapters        optional: where each round's global adapters are stored (s2rt state file)
    partition-id    optional, seeds the device's shuffling
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from s2rt.data import Samples, load_samples
from s2rt.session import Model
from s2rt.state import save_adapters

from s2fleet.aggregate import Adapters, Aggregation
from s2fleet.apps import EXAMPLES, AdapterStrategy, DeviceData, from_record, to_record
from s2fleet.apps import client_app as make_client_app
from s2fleet.device import global_accuracy

SERVER_KEYS = ("bundle", "rounds", "local-epochs", "learning-rate", "aggregation", "step", "min-nodes", "out")
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


client_app: ClientApp = make_client_app(DeviceData(_device_load))


@client_app.evaluate()
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


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    _require(config, SERVER_KEYS, "run config (flwr run --run-config)")
    model = Model.open(str(config["bundle"]))
    model.reset_adapters()
    initial: Adapters = model.head.per_tap()  # type: ignore[attr-defined]
    nodes = int(config["min-nodes"])
    strategy = AdapterStrategy(
        _aggregation(config["aggregation"]),
        model.bundle.head.rank,
        len(model.bundle.taps),
        step=float(config["step"]),
        min_train_nodes=nodes,
        min_available_nodes=nodes,
        fraction_evaluate=1.0,  # every device receives each round's global adapters
        min_evaluate_nodes=nodes,
    )
    curve: list[float] = []
    scored = str(config.get("test", ""))
    test = labelled(scored, model) if scored else None

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if test is None:
            return None
        curve.append(global_accuracy(model, from_record(arrays, strategy.taps), test.x, np.asarray(test.y)))
        return MetricRecord({"accuracy": curve[-1]})

    settings = ConfigRecord(
        {"bundle-digest": model.bundle.digest, "local-epochs": int(config["local-epochs"]), "learning-rate": float(config["learning-rate"])}
    )
    strategy.current = initial
    result = strategy.start(
        grid=grid,
        initial_arrays=to_record(initial),
        num_rounds=int(config["rounds"]),
        train_config=settings,
        evaluate_config=settings,
        evaluate_fn=evaluate,
    )
    final = strategy.current if strategy.current is not None else initial
    report = {
        "rounds": int(config["rounds"]),
        "accuracy": curve,
        "device-accuracy": {r: m.get("local-accuracy") for r, m in result.evaluate_metrics_clientapp.items()},
        "refused": strategy.refused,
        "bundle-digest": model.bundle.digest,
    }
    _write(Path(str(config["out"])), initial, final, report)
