"""The Flower apps (Message API): a ServerApp that aggregates Skip2-LoRA adapters and a
ClientApp that trains them on one device's samples through s2rt.

What travels each round, server -> device: the global adapters (`A.l`, `B.l` per tap, an
ArrayRecord), the bundle digest they belong to and the round's training settings (a
ConfigRecord). Device -> server: the device's adapters and its example count. No sample
and no cached activation leaves a device.

A round's `task` says what the device computes: `adapters` (the default: train and return
them) or `statistics` (the ridge sums of `s2fleet.ridge`: a strategy with `start="ridge"`
asks for them in its first round and solves the head from their total).

A device refuses a round whose bundle digest is not the one it serves (its reply is an
error that the server logs and leaves out of the aggregate).
"""

from __future__ import annotations

import logging
import re
import resource
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

from s2fleet import ridge
from s2fleet.aggregate import Adapters, Aggregation, Update, aggregate, delta, truncation_error
from s2fleet.device import local_update

log = logging.getLogger(__name__)

EXAMPLES = "num-examples"  # Flower's conventional weighting key
PEAK_RSS = "peak-rss-mb"  # the device process's, reported with each update
HELD_OUT = "held-out-"  # a statistics reply's sums of the device's held-out samples


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


def train_adapters(model: Model, samples: Samples, message: Message, context: Context) -> RecordDict:
    """Train from the global adapters; reply with the device's adapters and example count."""
    config = message.content["config"]
    start = from_record(message.content["arrays"], len(model.bundle.taps))
    update = local_update(
        model,
        samples,
        start,
        epochs=int(config["local-epochs"]),
        learning_rate=float(config["learning-rate"]),
        seed=int(config.get("server-round", 0)) * 1000 + int(context.node_config.get("partition-id", 0)),
        logit_adjustment=float(config.get("logit-adjustment", 0.0)),
    )
    return RecordDict({"arrays": to_record(update.adapters), "metrics": MetricRecord({EXAMPLES: update.examples, **_peak()})})


def ridge_statistics(model: Model, samples: Samples, message: Message, context: Context) -> RecordDict:
    """The ridge sums (`s2fleet.ridge`) of the device's samples, split as the daemon's jobs split them, and its example count."""
    kappa = float(message.content["config"].get("ridge-kappa", ridge.KAPPA))
    train, held = ridge.split_statistics(model, samples, kappa)
    return statistics_record(train, held, _peak())


def statistics_record(train: ridge.Statistics, held: ridge.Statistics, extra: dict[str, float] | None = None) -> RecordDict:
    """A statistics reply: the sums of the samples the device trains on, and of its held-out ones (they choose lambda)."""
    arrays = {"gram": train.gram, "cross": train.cross, HELD_OUT + "gram": held.gram, HELD_OUT + "cross": held.cross}
    metrics = {EXAMPLES: train.examples, "targets": train.targets, HELD_OUT + "examples": held.examples, HELD_OUT + "targets": held.targets}
    record = ArrayRecord(array_dict={k: Array.from_numpy_ndarray(np.ascontiguousarray(v, np.float32)) for k, v in arrays.items()})
    return RecordDict({"arrays": record, "metrics": MetricRecord({**metrics, **(extra or {})})})


def statistics_of(message: Message) -> tuple[ridge.Statistics, ridge.Statistics]:
    """The (training, held-out) sums of a statistics reply."""
    arrays, metrics = message.content["arrays"], message.content["metrics"]
    return tuple(  # type: ignore[return-value]
        ridge.Statistics(
            arrays[prefix + "gram"].numpy(),
            arrays[prefix + "cross"].numpy(),
            float(metrics.get(prefix + "targets", 0.0)),
            int(metrics[EXAMPLES if not prefix else prefix + "examples"]),
        )
        for prefix in ("", HELD_OUT)
    )


def _peak() -> dict[str, float]:
    """The device process's peak RSS in MB so far (Linux reports ru_maxrss in KiB)."""
    return {PEAK_RSS: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


TASKS: dict[str, Callable[[Model, Samples, Message, Context], RecordDict]] = {
    "adapters": train_adapters,
    "statistics": ridge_statistics,
}


def client_app(data: DeviceData) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        model, samples = data.load(context)
        config = message.content["config"]
        digest = str(config["bundle-digest"])
        if digest != model.bundle.digest:
            raise RuntimeError(f"refused: the round is for bundle {digest[:16]}, this device serves {model.bundle.digest[:16]}")
        task = str(config.get("task", "adapters"))
        if task not in TASKS:
            raise RuntimeError(f"refused: unknown task {task!r}; this device knows {', '.join(TASKS)}")
        return Message(content=TASKS[task](model, samples, message, context), reply_to=message)

    return app


# -- server side -----------------------------------------------------------------------
@dataclass(frozen=True)
class RidgeStart:
    """Round 1 solves the head from the devices' ridge sums (`s2fleet.ridge`) instead of training.
    `lam` None: chosen by the fit's error on the devices' held-out sums (`ridge.choose_lambda`)."""

    tap_sizes: tuple[int, ...]
    scaling: float
    kappa: float = ridge.KAPPA
    lam: float | None = None


class AdapterStrategy(FedAvg):
    """FedAvg's sampling and messaging, with Skip2-LoRA's aggregation (`s2fleet.aggregate`);
    with `ridge`, a closed-form first round (`s2fleet.ridge`)."""

    def __init__(
        self, method: Aggregation, rank: int, taps: int, step: float = 1.0, ridge_start: RidgeStart | None = None, **kwargs: Any
    ) -> None:
        super().__init__(weighted_by_key=EXAMPLES, **kwargs)
        self.method, self.rank, self.taps, self.step, self.ridge_start = method, rank, taps, step, ridge_start
        self.current: Adapters | None = None
        self.truncation: list[float] = []
        self.refused: list[str] = []
        self.device_peak_mb = 0.0  # the largest peak RSS a device reported
        self.ridge_choice: dict[str, Any] | None = None  # with ridge_start: the lambda the first round used, and why

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        config = ConfigRecord(dict(config))  # the caller's record is the same every round
        if self.ridge_start is not None and server_round == 1:
            config["task"], config["ridge-kappa"] = "statistics", self.ridge_start.kappa
        return super().configure_train(server_round, arrays, config, grid)

    def _answers(self, replies: Iterable[Message]) -> list[Message]:
        """Replies that carry examples (training or, in a ridge round, held-out ones); the refusals are kept in `refused`."""
        kept = []
        for msg in replies:
            if msg.has_error():
                self.refused.append(_reason(msg.error.reason))
            elif int(msg.content["metrics"][EXAMPLES]) > 0 or int(msg.content["metrics"].get(HELD_OUT + "examples", 0)) > 0:
                kept.append(msg)
                self.device_peak_mb = max(self.device_peak_mb, float(msg.content["metrics"].get(PEAK_RSS, 0.0)))
        return kept

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        answers = self._answers(replies)
        if not answers:
            return None, None
        if self.ridge_start is not None and server_round == 1:
            return self._solve_ridge(answers)
        updates = [Update(from_record(m.content["arrays"], self.taps), int(m.content["metrics"][EXAMPLES])) for m in answers]
        step = self.step if self.method == Aggregation.DAMPED else 1.0
        result = aggregate(self.method, updates, self.rank, self.current, step)
        self.truncation.append(truncation_error(updates, result, self.current, step))
        self.current = result
        total = sum(u.examples for u in updates)
        return to_record(result), MetricRecord({EXAMPLES: total, "devices": len(updates)})

    def _solve_ridge(self, answers: list[Message]) -> tuple[ArrayRecord, MetricRecord]:
        assert self.ridge_start is not None
        start = self.ridge_start
        width = sum(start.tap_sizes)
        parts = [statistics_of(m) for m in answers]
        train, held = [p[0] for p in parts], [p[1] for p in parts]
        dw, choice = ridge.fit_chosen(train, held, width, start.lam)
        self.ridge_choice = {"kappa": start.kappa, "held_out_examples": sum(h.examples for h in held), **choice.report()}
        self.current = ridge.to_adapters(dw, start.tap_sizes, self.rank, start.scaling)
        got = np.concatenate(delta(self.current), axis=1) * start.scaling
        self.truncation.append(float(np.linalg.norm(got - dw) / max(float(np.linalg.norm(dw)), 1e-30)))
        total = sum(p.examples for p in train)
        return to_record(self.current), MetricRecord({EXAMPLES: total, "devices": len(parts), "ridge-lambda": choice.lam})


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
