"""`s2fleet.rollout` against real `s2rt serve` daemons, without a SuperLink: the device side
(`deploy_bundle`, `rollback_bundle`) called with the messages the server side builds, and the
server side's stages driven through a Grid that hands each message to a device's ClientApp
handler (the same calls a SuperNode makes).

Daemons start with `--trusted-key`: every bundle that travels is signed, and one signed by
another key is refused by the daemon itself."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers.daemon import Daemon, wait_job
from helpers.keys import test_key
from onnx import numpy_helper
from s2conv import ConvertOptions, convert
from s2rt.bundle import write_bundle
from s2rt.bundle.signing import sign_bundle_bytes
from s2rt.trust import open_trusted

with warnings.catch_warnings():  # flwr's import calls click functions that click now deprecates (errors in this suite)
    warnings.filterwarnings("ignore", r"'click\.utils\..*' is deprecated", DeprecationWarning)
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from s2fleet import rollout
    from s2fleet import rollout_device as dev

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
TRUSTED, STRANGER = test_key(3), test_key(4)
TOKEN = "rollout-test-token-0123456789"


@dataclass(frozen=True)
class Bundles:
    base: bytes  # what the daemons start on
    good: bytes  # same frozen model, another head seed: as accurate, another digest
    bad: bytes  # the last layer's classes shifted by one: far less accurate
    foreign: bytes  # `good`, signed by a key the daemons do not trust


def _bundle(tmp: Path, name: str, model: Path, seed: int, key=TRUSTED) -> bytes:
    path = tmp / f"{name}.s2l"
    write_bundle(convert(model, ConvertOptions(rank=8, seed=seed)), path)
    return sign_bundle_bytes(path.read_bytes(), key)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    tmp = tmp_path_factory.mktemp("bundles")
    broken = onnx.load(MODELS / "har_mlp.onnx")
    for init in broken.graph.initializer:
        if init.name in ("fc3.weight", "fc3.bias"):
            init.CopyFrom(numpy_helper.from_array(np.roll(numpy_helper.to_array(init), 1, axis=0), init.name))
    onnx.save(broken, tmp / "broken.onnx")
    return Bundles(
        _bundle(tmp, "base", MODELS / "har_mlp.onnx", 0),
        _bundle(tmp, "good", MODELS / "har_mlp.onnx", 1),
        _bundle(tmp, "bad", tmp / "broken.onnx", 0),
        _bundle(tmp, "foreign", MODELS / "har_mlp.onnx", 1, key=STRANGER),
    )


def digest(data: bytes) -> str:
    return open_trusted(data).digest


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The identity a ServerApp/ClientApp process has while it runs (Flower stamps messages with it)."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


@dataclass
class Device:
    daemon: Daemon
    context: Context

    def model(self) -> dict[str, Any]:
        return self.daemon.client.get("/v1/model").json()

    def active(self) -> int:
        return int(self.daemon.client.get("/v1/adapters").json()["active"])


@pytest.fixture
def devices(tmp_path: Path, bundles: Bundles) -> Iterator[Any]:
    """devices(n, untrained): n daemons on the base bundle, each with 200 HAR samples and, unless untrained, one
    trained adapter version (active)."""
    started: list[Daemon] = []
    TRUSTED.save(tmp_path / "trusted")
    (tmp_path / "tokens").write_text(TOKEN + "\n")
    (tmp_path / "tokens").chmod(0o600)
    with np.load(MODELS / "data" / "har_ft.npz") as f:
        x, y = f["x"], f["y"]

    def start(n: int, untrained: Iterable[int] = ()) -> list[Device]:
        out = []
        for k in range(n):
            folder = tmp_path / f"device{k}"
            folder.mkdir()
            (folder / "base.s2l").write_bytes(bundles.base)
            args = [str(folder / "base.s2l"), "--state-dir", str(folder / "state"), "--port", "0"]
            args += ["--trusted-key", str(tmp_path / "trusted.pub"), "--token-file", str(tmp_path / "tokens")]
            daemon = Daemon(args, folder / "daemon.log")
            started.append(daemon)
            daemon.client.headers["authorization"] = f"Bearer {TOKEN}"
            part = slice(200 * k, 200 * (k + 1))
            assert daemon.client.post("/v1/samples", json={"x": x[part].tolist(), "y": y[part].tolist()}).status_code == 201
            if k not in untrained:
                job = daemon.client.post("/v1/jobs", json={"epochs": 10}).json()
                assert wait_job(daemon.client, job["id"])["state"] == "succeeded"
            node = {"daemon-url": daemon.url, "daemon-token-file": str(tmp_path / "tokens"), "rollout-dir": str(folder / "rollout")}
            context = Context(run_id=1, node_id=100 + k, node_config=node, state=RecordDict(), run_config={})
            out.append(Device(daemon, context))
        return out

    yield start
    for d in started:
        d.kill()


class LocalGrid:
    """The Grid calls `rollout.serve` makes, answered by the devices' ClientApp handlers in this process."""

    HANDLERS = {
        f"query.{dev.DEPLOY}": dev.deploy_bundle,
        f"query.{dev.ROLLBACK}": dev.rollback_bundle,
    }

    def __init__(self, devices: list[Device], unreachable: Iterable[int] = ()) -> None:
        self.devices = {d.context.node_id: d for d in devices}
        self.unreachable = set(unreachable)  # SuperNodes that never answer
        self.sent: list[tuple[str, int]] = []

    def get_node_ids(self) -> list[int]:
        return sorted(self.devices)

    def send_and_receive(self, messages: Iterable[Message], timeout: float) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self.sent.append((message.metadata.message_type, node))
            if node not in self.unreachable:
                reply = self.HANDLERS[message.metadata.message_type](message, self.devices[node].context)
                replies.append(reply)
        return replies


def run_config(data: bytes, tmp: Path, **extra: Any) -> dict[str, Any]:
    (tmp / "rollout.s2l").write_bytes(data)
    config = {"mode": "rollout", "bundle": str(tmp / "rollout.s2l"), "out": str(tmp / "report.json"), "min-nodes": 1}
    return config | {"canary-fraction": 0.3, "max-drop": 0.02, "stage-timeout": 60.0} | extra


def server_context(config: dict[str, Any]) -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config)


def deploy_message(data: bytes, sha256: str | None = None) -> Message:
    import hashlib

    from flwr.app import Array, ArrayRecord

    config = ConfigRecord(
        {"bundle-digest": digest(data), "bundle-sha256": sha256 or hashlib.sha256(data).hexdigest(), "ready-timeout": 60.0}
    )
    content = RecordDict({"bundle": ArrayRecord({"file": Array(np.frombuffer(data, np.uint8).copy())}), "config": config})
    return Message(content=content, dst_node_id=100, message_type=f"query.{dev.DEPLOY}")


def outcome(reply: Message) -> dict[str, Any]:
    return dict(reply.content["outcome"])


def test_a_device_deploys_a_signed_bundle_and_rolls_back_to_its_own(devices, bundles):
    (device,) = devices(1)
    active = device.active()
    got = outcome(dev.deploy_bundle(deploy_message(bundles.good), device.context))
    assert got["status"] == dev.DEPLOYED and got["before"] == digest(bundles.base), got
    assert device.model()["bundle_digest"] == digest(bundles.good)
    assert got["held_out"] > 0 and got["accuracy_after"] == pytest.approx(got["accuracy_after"])
    assert 0.0 <= got["accuracy_after"] <= 1.0 and 0.0 <= got["accuracy_before"] <= 1.0
    kept = Path(device.context.node_config["rollout-dir"])
    assert json.loads((kept / "previous.json").read_text()) == {"digest": digest(bundles.base), "replaced_by": digest(bundles.good)}

    rollback = Message(content=RecordDict({"config": ConfigRecord({"bundle-digest": digest(bundles.good)})}), dst_node_id=100,
                       message_type=f"query.{dev.ROLLBACK}")  # fmt: skip
    back = outcome(dev.rollback_bundle(rollback, device.context))
    assert back["status"] == dev.ROLLED_BACK, back
    assert device.model()["bundle_digest"] == digest(bundles.base)
    assert device.active() == active != 0  # the base bundle's trained adapters are served again: nothing committed lost
    again = outcome(dev.rollback_bundle(rollback, device.context))  # a second rollback changes nothing
    assert again["status"] == dev.REFUSED and "left as it is" in again["reason"]


def test_a_bundle_signed_by_another_key_is_refused_by_the_daemon(devices, bundles):
    (device,) = devices(1)
    got = outcome(dev.deploy_bundle(deploy_message(bundles.foreign), device.context))
    assert got["status"] == dev.REFUSED and "PUT /v1/bundle: 4" in got["reason"] and STRANGER.key_id[:16] in got["reason"], got
    assert device.model()["bundle_digest"] == digest(bundles.base)


def test_altered_bytes_and_a_missing_daemon_are_named(devices, bundles, tmp_path):
    (device,) = devices(1)
    altered = outcome(dev.deploy_bundle(deploy_message(bundles.good, sha256="0" * 64), device.context))
    assert altered["status"] == dev.REFUSED and "arrived altered" in altered["reason"]
    device.daemon.kill()
    gone = outcome(dev.deploy_bundle(deploy_message(bundles.good), device.context))
    assert gone["status"] == dev.UNREACHABLE and "cannot reach the daemon" in gone["reason"]


def test_canaries_first_then_the_rest_with_a_table_and_a_report(devices, bundles, tmp_path, capsys):
    fleet = devices(3)
    fleet[2].daemon.kill()  # this device's daemon is down: unreachable, the others carry on
    grid = LocalGrid(fleet)
    # each device fine-tunes the new bundle before it is judged against its fine-tuned old one
    rollout.serve(grid, server_context(run_config(bundles.good, tmp_path, **{"train-epochs": 10, "max-drop": 0.1})))  # type: ignore[arg-type]
    report = json.loads((tmp_path / "report.json").read_text())
    rows = report["devices"]
    assert report["failed"] is None and grid.sent[0] == (f"query.{dev.DEPLOY}", 100)
    assert [rows[str(n)]["stage"] for n in (100, 101, 102)] == ["canary", "rest", "rest"]
    assert [rows[str(n)]["status"] for n in (100, 101, 102)] == [
        dev.DEPLOYED,
        dev.DEPLOYED,
        dev.UNREACHABLE,
    ]
    assert [d.model()["bundle_digest"] for d in fleet[:2]] == [digest(bundles.good)] * 2
    assert all(d.active() > 0 for d in fleet[:2])  # the new bundle serves adapters fine-tuned on the device
    for row in (rows["100"], rows["101"]):
        assert row["accuracy_after"] >= row["accuracy_before"] - 0.1
    assert rollout.main(["show", str(tmp_path / "report.json")]) == 0
    printed = capsys.readouterr().out
    assert "unreachable" in printed and "cannot reach the daemon" in printed and f"rollout of bundle {digest(bundles.good)[:16]}" in printed


def test_a_canary_that_does_not_hold_is_rolled_back_and_the_rest_are_not_touched(devices, bundles, tmp_path):
    fleet = devices(3)
    before = [d.active() for d in fleet]
    grid = LocalGrid(fleet)
    with pytest.raises(RuntimeError, match=r"canary stage failed: device 100: held-out accuracy fell from"):
        rollout.serve(grid, server_context(run_config(bundles.bad, tmp_path)))  # type: ignore[arg-type]
    rows = json.loads((tmp_path / "report.json").read_text())["devices"]
    assert rows["100"]["status"] == dev.ROLLED_BACK and rows["100"]["accuracy_after"] < rows["100"]["accuracy_before"] - 0.02
    assert rows["101"]["status"] == rows["102"]["status"] == rollout.NOT_ATTEMPTED
    assert grid.sent == [(f"query.{dev.DEPLOY}", 100), (f"query.{dev.ROLLBACK}", 100)]
    assert [d.model()["bundle_digest"] for d in fleet] == [digest(bundles.base)] * 3
    assert [d.active() for d in fleet] == before


def test_a_device_of_the_second_stage_that_does_not_hold_is_rolled_back_alone(devices, bundles, tmp_path):
    # the canary serves its bundle's initial head, as the new bundle does: it holds; the other device serves
    # adapters trained on its samples, which the new bundle's initial head does not match
    fleet = devices(2, untrained=[0])
    before = fleet[1].active()
    grid = LocalGrid(fleet)
    rollout.serve(grid, server_context(run_config(bundles.good, tmp_path)))  # type: ignore[arg-type]
    rows = json.loads((tmp_path / "report.json").read_text())["devices"]
    assert rows["100"]["status"] == dev.DEPLOYED and rows["101"]["status"] == dev.ROLLED_BACK, rows
    assert "held-out accuracy fell from" in rows["101"]["check"]
    assert grid.sent[-1] == (f"query.{dev.ROLLBACK}", 101)
    assert fleet[0].model()["bundle_digest"] == digest(bundles.good) and fleet[1].model()["bundle_digest"] == digest(bundles.base)
    assert fleet[1].active() == before


def test_a_canary_without_a_reply_fails_the_stage(devices, bundles, tmp_path):
    fleet = devices(2)
    grid = LocalGrid(fleet, unreachable=[100])
    with pytest.raises(RuntimeError, match=r"device 100: unreachable: no reply within 60 s"):
        rollout.serve(grid, server_context(run_config(bundles.good, tmp_path)))  # type: ignore[arg-type]
    assert json.loads((tmp_path / "report.json").read_text())["devices"]["101"]["status"] == rollout.NOT_ATTEMPTED
    assert fleet[1].model()["bundle_digest"] == digest(bundles.base)


def test_the_check_a_device_must_pass():
    ok = {"status": dev.DEPLOYED, "accuracy_before": 0.9, "accuracy_after": 0.89}
    assert rollout.holds(ok, 0.02, 0.0) == (True, "")
    assert rollout.holds(ok, 0.0, 0.0)[1] == "held-out accuracy fell from 0.9000 to 0.8900 (max-drop 0.0000)"
    assert rollout.holds(ok, 0.02, 0.95)[1] == "held-out accuracy 0.8900 is below min-accuracy 0.9500"
    assert rollout.holds({"status": dev.DEPLOYED}, 0.02, 0.0) == (False, "no held-out samples on the device to judge the bundle by")
    assert rollout.holds({"status": dev.DEPLOYED, "accuracy_before": 0.9}, 0.02, 0.0, evidence=False)[0]
    assert not rollout.holds({"status": dev.DEPLOYED, "accuracy_before": 0.9}, 0.02, 0.0)[0]  # judged on the new bundle only
    assert rollout.holds({"status": dev.REFUSED, "reason": "403: not signed"}, 0.02, 0.0) == (False, "refused: 403: not signed")


def test_the_bundle_to_roll_out_is_checked_on_the_server(tmp_path):
    with pytest.raises(ValueError, match="run config bundle: missing"):
        rollout.read_rollout_bundle("")
    with pytest.raises(ValueError, match=f"run config bundle: {tmp_path / 'none.s2l'}: No such file"):
        rollout.read_rollout_bundle(str(tmp_path / "none.s2l"))
    (tmp_path / "junk.s2l").write_bytes(b"junk" * 100)
    with pytest.raises(ValueError, match="run config bundle: "):
        rollout.read_rollout_bundle(str(tmp_path / "junk.s2l"))
    (tmp_path / "huge.s2l").write_bytes(b"\0" * (rollout.MAX_BUNDLE_BYTES + 1))
    with pytest.raises(ValueError, match=r"is 16777217 bytes; the daemons take at most 16777216 \(--max-bundle-bytes\)"):
        rollout.read_rollout_bundle(str(tmp_path / "huge.s2l"))


def test_canaries_named_by_node_id():
    assert rollout.canaries("", [1, 2, 3, 4], 0.25) == [1]
    assert rollout.canaries("", [1, 2, 3], 0.5) == [1, 2]
    assert rollout.canaries("3, 1", [1, 2, 3], 0.25) == [3, 1]
    with pytest.raises(ValueError, match="run config canary-nodes: 9: not among the connected nodes"):
        rollout.canaries("9", [1, 2], 0.25)
    with pytest.raises(ValueError, match="run config canary-nodes: expected node ids separated by commas, found 'a,b'"):
        rollout.canaries("a,b", [1, 2], 0.25)
