"""The Flower apps (Message API): a ServerApp that aggregates Skip2-LoRA adapters and a
ClientApp that trains them on one device's samples through s2rt.

What travels each round, server -> device: the global adapters (`A.l`, `B.l` per tap, an
ArrayRecord), the bundle digest they belong to and the round's training settings (a
ConfigRecord). Device -> server: the device's adapters and its example count. No sample
and no cached activation leaves a device.

A device refuses a round whose bundle digest is not the one it serves (its reply is an
error that the server logs and leaves out of the aggregate).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from s2rt.data import Samples
from s2rt.session import Model

from s2fleet.aggregate import Adapters, Aggregation, Update, aggregate, truncation_error
from s2fleet.device import local_update

log = logging.getLogger(__name__)

EXAMPLES = "num-examples"  # Flower's conventional weighting key


def to_record(adapters: Adapters) -> ArrayRecord:
    """Per tap `A.l` and `B.l`, float32: the names of the adapter state file."""
    arrays: dict[str, Array] = {}
    for t, (a, b) in enumerate(adapters):
        arrays[f"A.{t}"] = Array.from_numpy_ndarray(np.ascontiguousarray(a, np.float32))
        arrays[f"B.{t}"] = Array.from_numpy_ndarray(np.ascontiguousarray(b, np.float32))
    return ArrayRecord(array_dict=arrays)


def from_record(record: ArrayRecord, taps: int) -> Adapters:
    names = {f"{p}.{t}" for t in range(taps) for p in "AB"}
    if set(record.keys()) != names:
        raise ValueError(f"adapter record: expected arrays {sorted(names)}, got {sorted(record.keys())}")
    return [(record[f"A.{t}"].numpy(), record[f"B.{t}"].numpy()) for t in range(taps)]


# -- device side -----------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceData:
    """How a ClientApp finds its bundle and samples: `load(context)` -> (model, samples)."""

    load: Callable[[Context], tuple[Model, Samples]]


def client_app(data: DeviceData) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        model, samples = data.load(context)
        config = message.content["config"]
        digest = str(config["bundle-digest"])
        if digest != model.bundle.digest:
            raise RuntimeError(f"refused: the round is for bundle {digest[:16]}, this device serves {model.bundle.digest[:16]}")
        start = from_record(message.content["arrays"], len(model.bundle.taps))
        update = local_update(
            model,
            samples,
            start,
            epochs=int(config["local-epochs"]),
            learning_rate=float(config["learning-rate"]),
            seed=int(config.get("server-round", 0)) * 1000 + int(context.node_config.get("partition-id", 0)),
        )
        content = RecordDict({"arrays": to_record(update.adapters), "metrics": MetricRecord({EXAMPLES: update.examples})})
        return Message(content=content, reply_to=message)

    return app


# -- server side -----------------------------------------------------------------------
class AdapterStrategy(FedAvg):
    """FedAvg's sampling and messaging, with Skip2-LoRA's aggregation (`s2fleet.aggregate`)."""

    def __init__(self, method: Aggregation, rank: int, taps: int, step: float = 1.0, **kwargs: Any) -> None:
        super().__init__(weighted_by_key=EXAMPLES, **kwargs)
        self.method, self.rank, self.taps, self.step = method, rank, taps, step
        self.current: Adapters | None = None
        self.truncation: list[float] = []
        self.refused: list[str] = []

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        updates = []
        for msg in replies:
            if msg.has_error():
                self.refused.append(_reason(msg.error.reason))
                continue
            examples = int(msg.content["metrics"][EXAMPLES])
            if examples > 0:
                updates.append(Update(from_record(msg.content["arrays"], self.taps), examples))
        if not updates:
            return None, None
        step = self.step if self.method == Aggregation.DAMPED else 1.0
        result = aggregate(self.method, updates, self.rank, self.current, step)
        self.truncation.append(truncation_error(updates, result, self.current, step))
        self.current = result
        total = sum(u.examples for u in updates)
        return to_record(result), MetricRecord({EXAMPLES: total, "devices": len(updates)})


def _reason(text: str) -> str:
    """The device's own words from an error reply (the simulation wraps them in tracebacks)."""
    found = re.search(r"refused: [^\n'\\]*", text)
    return found.group(0) if found else text.strip().splitlines()[-1][:300] if text.strip() else "no reason given"


def run_rounds(
    grid: Grid,
    strategy: AdapterStrategy,
    initial: Adapters,
    rounds: int,
    train_config: dict[str, Any],
    evaluate: Callable[[Adapters], float] | None = None,
) -> list[float]:
    """`rounds` rounds of training; the accuracy of the global adapters after each (with `evaluate`)."""
    strategy.current = initial
    curve: list[float] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if evaluate is None:
            return None
        accuracy = evaluate(from_record(arrays, strategy.taps))
        curve.append(accuracy)
        return MetricRecord({"accuracy": accuracy})

    strategy.start(
        grid=grid,
        initial_arrays=to_record(initial),
        num_rounds=rounds,
        train_config=ConfigRecord(train_config),
        evaluate_fn=evaluate_fn,
    )
    return curve
