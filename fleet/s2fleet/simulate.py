"""N devices on one machine through Flower's Simulation Engine, from a workload's fine-tune data.

    python -m s2fleet.simulate --bundle har.s2l --data models/data/har_ft.npz \\
        --test models/data/har_test.npz --devices 10 --partition shards --aggregation exact

Each simulated device holds one partition of the fine-tune samples (`s2fleet.partition`),
trains the bundle's Skip2-LoRA head from the global adapters for a few local epochs per
round and returns its adapters; the server aggregates them and scores the global adapters
on the test split after every round. The baselines beside it use the same samples without
Flower: each device alone (mean accuracy over devices) and all samples in one place.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from s2rt.data import Samples
from s2rt.session import Model
from s2rt.trainer import TrainConfig

from s2fleet.aggregate import Adapters, Aggregation
from s2fleet.device import global_accuracy, local_update
from s2fleet.partition import NAMES, SOURCE_PARTITIONS, partition


@dataclass(frozen=True)
class FleetRun:
    bundle: str
    devices: int
    partition: str = "shards"
    aggregation: str = "exact"
    rounds: int = 5
    local_epochs: int = 5
    learning_rate: float = 0.01
    step: float = 1.0
    seed: int = 0
    start: str = "adapters"  # or "ridge": round 1 solves the head from the devices' sums (s2fleet.ridge)
    logit_adjustment: float = 0.0  # local training on z + tau log(local class prior) (TrainConfig.logit_adjustment)


@dataclass(frozen=True)
class Data:
    x: np.ndarray
    y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    sources: dict[str, np.ndarray] = field(default_factory=dict)  # per-sample ids of x, e.g. subject (s2fleet.partition)

    def parts(self, run: FleetRun) -> list[np.ndarray]:
        return partition(run.partition, self.y, run.devices, run.seed, self.sources)


_MODELS: dict[str, Model] = {}  # one per bundle in each worker process: the backend session is built once


def _model(bundle: str) -> Model:
    if bundle not in _MODELS:
        _MODELS[bundle] = Model.open(bundle)
    model = _MODELS[bundle]
    model.reset_adapters()
    return model


def initial_adapters(model: Model) -> Adapters:
    model.reset_adapters()
    return model.head.per_tap()  # type: ignore[attr-defined,no-any-return]


def federated(run: FleetRun, data: Data, device_bundles: Sequence[str] | None = None) -> dict[str, Any]:
    """The Flower simulation: accuracy of the global adapters after each round.

    `device_bundles` (one path per device) lets devices serve another bundle than the
    server's: they refuse every round and the others carry on."""
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from s2fleet.apps import AdapterStrategy, DeviceData, RidgeStart, client_app, run_rounds

    parts = data.parts(run)

    def load(context: Any) -> tuple[Model, Samples]:
        k = int(context.node_config["partition-id"])
        bundle = device_bundles[k] if device_bundles is not None else run.bundle
        return _model(bundle), Samples(data.x[parts[k]], data.y[parts[k]])

    probe = Model.open(run.bundle)
    strategy = AdapterStrategy(
        Aggregation(run.aggregation),
        probe.bundle.head.rank,
        len(probe.bundle.taps),
        step=run.step,
        ridge_start=RidgeStart(probe.head.tap_sizes, probe.head.scaling) if run.start == "ridge" else None,  # type: ignore[attr-defined]
        min_train_nodes=run.devices,
        min_available_nodes=run.devices,
        fraction_evaluate=0.0,
    )
    out: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Any) -> None:
        settings = {
            "bundle-digest": probe.bundle.digest,
            "local-epochs": run.local_epochs,
            "learning-rate": run.learning_rate,
            "logit-adjustment": run.logit_adjustment,
        }
        out["curve"] = run_rounds(
            grid,
            strategy,
            initial_adapters(probe),
            run.rounds,
            settings,
            evaluate=timed,
        )

    stamps: list[float] = []

    def timed(adapters: Adapters) -> float:
        stamps.append(time.perf_counter())  # after round r's aggregation: the rounds' wall time is between stamps
        return global_accuracy(probe, adapters, data.test_x, data.test_y)

    started = time.perf_counter()
    run_simulation(
        server_app=server,
        client_app=client_app(DeviceData(load)),
        num_supernodes=run.devices,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"logging_level": "ERROR", "log_to_driver": False},
        },
    )
    out["seconds"] = time.perf_counter() - started
    out["round_seconds"] = np.diff(stamps).tolist()
    out["truncation_error"] = strategy.truncation
    out["refused"] = strategy.refused
    out["device_peak_rss_mb"] = strategy.device_peak_mb
    out["ridge"] = strategy.ridge_choice  # with --start ridge: the lambda round 1 used, chosen by the held-out sums
    out["adapters"] = strategy.current
    return out


def alone(run: FleetRun, data: Data) -> float:
    """Each device trains alone for as many epochs as the fleet's rounds give it; mean test accuracy."""
    model = Model.open(run.bundle)
    scores = []
    for k, index in enumerate(data.parts(run)):
        update = local_update(
            model,
            Samples(data.x[index], data.y[index]),
            initial_adapters(model),
            run.rounds * run.local_epochs,
            run.learning_rate,
            seed=k,
            logit_adjustment=run.logit_adjustment,
        )
        scores.append(global_accuracy(model, update.adapters, data.test_x, data.test_y))
    return float(np.mean(scores))


def centralized(run: FleetRun, data: Data) -> float:
    model = Model.open(run.bundle)
    d = model.bundle.head.defaults
    config = TrainConfig(epochs=run.rounds * run.local_epochs, batch_size=d.batch_size, learning_rate=run.learning_rate, seed=run.seed)
    model.fine_tune(Samples(data.x, data.y), config)
    predicted, _ = model.classify(data.test_x)
    return float(np.mean(predicted == data.test_y))


def load_data(ft: Path, test: Path, model: Model) -> Data:
    shape = model.bundle.input.shape
    with np.load(ft, allow_pickle=False) as f, np.load(test, allow_pickle=False) as t:
        return Data(
            f["x"].astype(np.float32).reshape(-1, *shape),
            f["y"].astype(np.int64),
            t["x"].astype(np.float32).reshape(-1, *shape),
            t["y"].astype(np.int64),
            {name: f[name] for name in SOURCE_PARTITIONS if name in f.files},
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m s2fleet.simulate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", required=True, help="the s2l bundle every device serves")
    parser.add_argument("--data", required=True, help="fine-tune samples (.npz with x, y), split over the devices")
    parser.add_argument("--test", required=True, help="test samples (.npz with x, y) scored after each round")
    parser.add_argument("--devices", type=int, default=10, help="simulated devices (default 10)")
    parser.add_argument(
        "--partition",
        default="shards",
        choices=NAMES,
        help="how samples are split (default shards); subject/recording read that array of --data and need "
        "--devices a multiple of its distinct ids (HAR: 5 subjects, 70 recordings), see s2fleet.partition",
    )
    parser.add_argument("--aggregation", default="exact", choices=[a.value for a in Aggregation], help="default exact")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--step", type=float, default=1.0, help="server step size for --aggregation damped (0, 5]")
    parser.add_argument(
        "--start",
        default="adapters",
        choices=["adapters", "ridge"],
        help="round 1: train from the bundle's adapters (default), or ridge: solve the head from the devices' sums (s2fleet.ridge)",
    )
    parser.add_argument(
        "--logit-adjustment", type=float, default=0.0, help="devices train on z + tau log(local class prior); 0: off (default)"
    )
    parser.add_argument("--baselines", action="store_true", help="also train each device alone and all samples in one place")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if not 0 <= args.logit_adjustment < float("inf"):
        parser.error(f"--logit-adjustment: expected a number >= 0, got {args.logit_adjustment}")
    run = FleetRun(
        args.bundle,
        args.devices,
        args.partition,
        args.aggregation,
        args.rounds,
        args.local_epochs,
        args.learning_rate,
        args.step,
        start=args.start,
        logit_adjustment=args.logit_adjustment,
    )
    data = load_data(Path(args.data), Path(args.test), Model.open(run.bundle))
    try:
        data.parts(run)
    except ValueError as e:
        parser.error(f"{args.data}: {e}")
    result: dict[str, Any] = {"run": asdict(run), "federated": federated(run, data)}
    del result["federated"]["adapters"]
    if args.baselines:
        result["alone"] = alone(run, data)
        result["centralized"] = centralized(run, data)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    sys.exit(main())
