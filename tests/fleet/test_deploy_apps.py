"""The deployment apps (`s2fleet.deploy_apps`) called directly, without a SuperLink: what a
device does with a global version it receives, and the errors that name a missing setting.

Needs the fleet extra (flwr): `make test` runs it in .venv-fleet."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from s2conv import ConvertOptions, convert
from s2rt.bundle import write_bundle
from s2rt.session import Model
from s2rt.state import load_adapters

# flwr's import calls click functions that click now deprecates (the suite turns warnings into errors)
pytestmark = pytest.mark.filterwarnings("ignore:'click\\.utils\\..*' is deprecated:DeprecationWarning")

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower stamps each Message with the identity of the process's task (set by a SuperNode
    when it starts a ClientApp): the identity of one, for these direct calls."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


@cache
def bundles(tmp: Path) -> tuple[Path, Path]:
    served, other = tmp / "har_r8.s2l", tmp / "har_r4.s2l"
    write_bundle(convert(MODELS / "har_mlp.onnx", ConvertOptions(rank=8)), served)
    write_bundle(convert(MODELS / "har_mlp.onnx", ConvertOptions(rank=4)), other)
    return served, other


def shard(tmp: Path) -> Path:
    with np.load(MODELS / "data" / "har_ft.npz") as f:
        path = tmp / "mine.npz"
        np.savez(path, x=f["x"][:60], y=f["y"][:60])
    return path


def version(bundle: Path, scale: float) -> list:
    model = Model.open(str(bundle))
    model.reset_adapters()
    return [(a, np.full_like(b, scale)) for a, b in model.head.per_tap()]  # type: ignore[attr-defined]


def evaluate_message(bundle_for: Path, adapters: list, server_round: int):
    from flwr.app import ConfigRecord, Message, RecordDict
    from s2fleet.apps import to_record

    config = ConfigRecord({"bundle-digest": Model.open(str(bundle_for)).bundle.digest, "server-round": server_round})
    return Message(content=RecordDict({"arrays": to_record(adapters), "config": config}), dst_node_id=1, message_type="evaluate")


def context(node_config: dict):
    from flwr.app import Context, RecordDict

    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


def test_a_device_stores_the_global_version_it_receives(tmp_path_factory, tmp_path):
    from s2fleet.deploy_apps import client_app

    served, _ = bundles(tmp_path_factory.mktemp("deploy"))
    target = tmp_path / "global.npz"
    adapters = version(served, 0.01)
    node = {"bundle": str(served), "data": str(shard(tmp_path)), "adapters": str(target)}
    reply = client_app(evaluate_message(served, adapters, 3), context(node))

    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 60 and 0.0 <= metrics["local-accuracy"] <= 1.0
    stored, meta = load_adapters(target, Model.open(str(served)).bundle)
    assert meta["server_round"] == 3 and meta["source"] == "fleet"
    for (a, b), (want_a, want_b) in zip(stored, adapters):
        np.testing.assert_array_equal(a, want_a)
        np.testing.assert_array_equal(b, want_b)


def test_a_device_refuses_a_version_for_another_bundle_and_keeps_its_own(tmp_path_factory, tmp_path):
    from s2fleet.deploy_apps import client_app

    served, other = bundles(tmp_path_factory.mktemp("deploy"))
    target = tmp_path / "global.npz"
    node = {"bundle": str(served), "data": str(shard(tmp_path)), "adapters": str(target)}
    assert not client_app(evaluate_message(served, version(served, 0.01), 1), context(node)).has_error()
    before = target.read_bytes()

    with pytest.raises(RuntimeError, match="refused: the version is for bundle"):  # the SuperNode sends it back as the error reply
        client_app(evaluate_message(other, version(other, 0.5), 2), context(node))
    assert target.read_bytes() == before  # the version it already holds is untouched


def test_a_missing_node_setting_is_named(tmp_path_factory, tmp_path):
    from s2fleet.deploy_apps import client_app

    served, _ = bundles(tmp_path_factory.mktemp("deploy"))
    with pytest.raises(ValueError, match=r"node config \(flower-supernode --node-config\): missing bundle \(expected keys bundle, data\)"):
        client_app(evaluate_message(served, version(served, 0.0), 1), context({"data": str(shard(tmp_path))}))


def test_an_unknown_aggregation_is_named():
    from s2fleet.deploy_apps import _aggregation

    assert _aggregation("damped").value == "damped"
    with pytest.raises(ValueError, match="run config aggregation: expected one of fedavg, exact, damped, found 'mean'"):
        _aggregation("mean")


def test_the_ridge_start_is_read_from_the_run_config_and_bad_values_are_named():
    from helpers.tiny import tiny_bundle
    from s2fleet.deploy_apps import _ridge_start
    from s2rt.session import Model

    model = Model(tiny_bundle())
    assert _ridge_start({}, model) is None and _ridge_start({"start": "adapters"}, model) is None
    start = _ridge_start({"start": "ridge", "ridge-kappa": 3.0}, model)
    assert start is not None and (start.kappa, start.lam, start.tap_sizes) == (3.0, None, tuple(model.head.tap_sizes))
    assert _ridge_start({"start": "ridge", "ridge-lambda": "0.01"}, model).lam == 0.01  # type: ignore[union-attr]
    cases = {
        "run config start: expected adapters or ridge, found 'closed'": {"start": "closed"},
        "run config ridge-kappa: expected a number > 0, found 0.0": {"start": "ridge", "ridge-kappa": 0.0},
        "run config ridge-lambda: expected auto or a number > 0, found 'best'": {"start": "ridge", "ridge-lambda": "best"},
        "run config ridge-lambda: expected auto or a number > 0, found '-1'": {"start": "ridge", "ridge-lambda": "-1"},
    }
    for message, config in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            _ridge_start(config, model)


class TwoNodes:
    def get_node_ids(self) -> list[int]:
        return [11, 12]


def test_a_round_with_too_few_updates_fails_naming_who_dropped_out(tmp_path_factory):
    from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
    from helpers.keys import test_key
    from s2fleet.aggregate import Aggregation
    from s2fleet.apps import EXAMPLES, to_record
    from s2fleet.deploy_apps import DeployStrategy, RoundFailed
    from s2fleet.signing import GlobalSigner

    served, _ = bundles(tmp_path_factory.mktemp("deploy"))
    bundle = Model.open(str(served)).bundle
    adapters = version(served, 0.01)

    def strategy(min_replies: int) -> DeployStrategy:
        s = DeployStrategy(GlobalSigner(bundle, test_key(7)), Aggregation.EXACT, bundle.head.rank, len(bundle.taps),
                           min_replies=min_replies, min_available_nodes=2, min_train_nodes=2, fraction_train=1.0)  # fmt: skip
        s.current = adapters
        return s

    def replies(s: DeployStrategy) -> tuple[list, int, int]:
        """One update and one error reply; the ids of the node that sent the update and of the one that dropped out."""
        config = ConfigRecord({"bundle-digest": bundle.digest, "local-epochs": 1, "learning-rate": 0.01})
        first, second = s.configure_train(1, to_record(adapters), config, TwoNodes())  # type: ignore[arg-type]
        update = RecordDict({"arrays": to_record(adapters), "metrics": MetricRecord({EXAMPLES: 10})})
        sent = [Message(update, reply_to=first), Message(Error(5, "Error: Node Unavailable - no heartbeat"), reply_to=second)]
        return sent, first.metadata.dst_node_id, second.metadata.dst_node_id

    failing = strategy(2)
    sent, _, dropped = replies(failing)
    with pytest.raises(
        RoundFailed, match=rf"round 1: 1 of 2 devices sent an update, min-replies is 2 \(device {dropped}: Error: Node Unavailable"
    ):
        failing.aggregate_train(1, sent)
    assert failing.current is adapters  # the last completed round's version stays
    lenient = strategy(1)
    sent, kept, dropped = replies(lenient)
    aggregated, metrics = lenient.aggregate_train(1, sent)
    assert aggregated is not None and metrics is not None and metrics["devices"] == 1
    assert lenient.devices[1][str(kept)]["train"] == {EXAMPLES: 10} and "Node Unavailable" in lenient.devices[1][str(dropped)]["train"]
