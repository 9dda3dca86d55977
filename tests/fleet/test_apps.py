"""The simulation's ClientApp (`s2fleet.apps.client_app`) called directly, without Ray: a
round's task picks what the device computes, and an unknown task is refused by name.

Needs the fleet extra (flwr): `make test` runs it in .venv-fleet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from s2conv import ConvertOptions, convert
from s2fleet import ridge
from s2rt.bundle import write_bundle
from s2rt.data import Samples
from s2rt.session import Model

# flwr's import calls click functions that click now deprecates (the suite turns warnings into errors)
pytestmark = pytest.mark.filterwarnings("ignore:'click\\.utils\\..*' is deprecated:DeprecationWarning")

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower stamps each Message with the identity of the process's task: the identity of one."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    from s2fleet.apps import DeviceData, client_app

    path = tmp_path_factory.mktemp("apps") / "har_r8.s2l"
    write_bundle(convert(MODELS / "har_mlp.onnx", ConvertOptions(rank=8)), path)
    with np.load(MODELS / "data" / "har_ft.npz") as f:
        samples = Samples(f["x"][:40].astype(np.float32), f["y"][:40].astype(np.int64))
    model = Model.open(str(path))
    return model, samples, client_app(DeviceData(lambda context: (model, samples)))


def call(app, model: Model, task: str):
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from s2fleet.apps import to_record

    model.reset_adapters()
    config = ConfigRecord({"bundle-digest": model.bundle.digest, "server-round": 1, "task": task, "local-epochs": 1, "learning-rate": 0.01})
    content = RecordDict({"arrays": to_record(model.head.per_tap()), "config": config})  # type: ignore[attr-defined]
    message = Message(content=content, dst_node_id=1, message_type="train")
    return app(message, Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={}))


def test_a_statistics_round_returns_the_devices_ridge_sums(device):
    model, samples, app = device
    reply = call(app, model, "statistics")
    train, held = ridge.split_statistics(model, samples)  # the daemon's split: its held-out samples choose lambda
    for prefix, want in (("", train), ("held-out-", held)):
        np.testing.assert_array_equal(reply.content["arrays"][prefix + "gram"].numpy(), want.gram)
        np.testing.assert_array_equal(reply.content["arrays"][prefix + "cross"].numpy(), want.cross)
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == train.examples and metrics["held-out-examples"] == held.examples > 0
    assert train.examples + held.examples == 40 and metrics["held-out-targets"] == pytest.approx(held.targets)
    assert reply.content["metrics"]["peak-rss-mb"] > 10  # the device process's peak, reported with each update


def test_an_adapters_round_returns_adapters(device):
    model, _, app = device
    reply = call(app, model, "adapters")
    assert sorted(reply.content["arrays"].keys()) == sorted(f"{p}.{t}" for t in range(3) for p in "AB")


def test_an_unknown_task_is_refused_by_name(device):
    model, _, app = device
    with pytest.raises(RuntimeError, match="refused: unknown task 'gradients'; this device knows adapters, statistics"):
        call(app, model, "gradients")
