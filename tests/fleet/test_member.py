"""`s2fleet.member`: the ClientApp that drives a real `s2rt serve` through its API, one round at a
time, called directly with the train message the signing strategy builds (no SuperLink).

The daemon runs in the daemon's own venv when there is one (flwr pins an older FastAPI):
$S2L_DAEMON_PYTHON, else ROOT/.venv/bin/python, else this interpreter."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.keys import test_key
from helpers.tiny import tiny_bundle
from s2fleet.aggregate import Aggregation
from s2rt.bundle.reader import parse_bundle
from s2rt.bundle.writer import serialize_bundle
from s2rt.serve.client import Client
from s2rt.serve.fleet_signing import verify

with warnings.catch_warnings():  # flwr's import calls click functions that click now deprecates (errors in this suite)
    warnings.filterwarnings("ignore", r"'click\.utils\..*' is deprecated", DeprecationWarning)
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from s2fleet.apps import EXAMPLES, from_record, to_record
    from s2fleet.member import RoundRefused, receive_round, train_round
    from s2fleet.signing import GLOBAL_FILE, GLOBAL_KEY, GLOBAL_SEQUENCE, GLOBAL_SIGNATURE, GlobalSigner, SignedAdapterStrategy

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "fleet-member-token-0123456789"
FLEET = test_key(7)
N_SAMPLES = 120
BUNDLE_FILE, _ = serialize_bundle(tiny_bundle())
BUNDLE = parse_bundle(BUNDLE_FILE, "tiny.s2l")  # as the daemon reads it: with its digest


def daemon_python() -> str:
    own = ROOT / ".venv" / "bin" / "python"
    return os.environ.get("S2L_DAEMON_PYTHON") or (str(own) if own.exists() else sys.executable)


class Daemon:
    def __init__(self, folder: Path) -> None:
        (folder / "tiny.s2l").write_bytes(BUNDLE_FILE)
        FLEET.save(folder / "fleet")
        (folder / "tokens").write_text(TOKEN + "\n")
        (folder / "tokens").chmod(0o600)
        self.log = folder / "daemon.log"
        args = ["serve", str(folder / "tiny.s2l"), "--state-dir", str(folder / "state"), "--port", "0"]
        args += ["--token-file", str(folder / "tokens"), "--fleet-key", str(folder / "fleet.pub")]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime"), "OMP_NUM_THREADS": "1"}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([daemon_python(), "-m", "s2rt", *args], env=env, stdout=log, stderr=log)
        self.url = f"http://127.0.0.1:{self._ready()['port']}"
        self.client = Client(self.url, token=TOKEN)
        self.node_config = {"daemon-url": self.url, "daemon-token-file": str(folder / "tokens")}

    def _ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("{") and json.loads(line).get("event") == "ready":
                    return dict(json.loads(line))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"s2rt serve did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((N_SAMPLES, 6)).astype(np.float32)
        y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 1).astype(int)
        d.client.call("POST", "/v1/samples", {"x": x.tolist(), "y": y.tolist()})
        yield d
    finally:
        d.stop()


@pytest.fixture(autouse=True)
def server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The identity a ServerApp process has while it runs (Flower reads it to address messages)."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


class OneNode:
    """The part of a Flower Grid that `configure_train` uses: the connected node ids."""

    def get_node_ids(self) -> list[int]:
        return [1]


def round_message(server_round: int = 1) -> tuple[Message, list[tuple[np.ndarray, np.ndarray]]]:
    """The train message of `server_round`, as the signing strategy builds it, and the global adapters it carries."""
    rng = np.random.default_rng(server_round)
    h = BUNDLE.head
    global_adapters = [(a.copy(), (0.1 * rng.standard_normal((h.num_outputs, h.rank))).astype(np.float32)) for a in h.a_init]
    strategy = SignedAdapterStrategy(
        GlobalSigner(BUNDLE, FLEET), Aggregation.EXACT, h.rank, len(BUNDLE.taps), min_available_nodes=1, min_train_nodes=1
    )
    config = ConfigRecord({"bundle-digest": BUNDLE.digest, "local-epochs": 3, "learning-rate": 0.05})
    (message,) = strategy.configure_train(server_round, to_record(global_adapters), config, OneNode())  # type: ignore[arg-type]
    return message, global_adapters


def with_config(message: Message, **changes: Any) -> Message:
    config = ConfigRecord({**dict(message.content["config"]), **changes})
    content = RecordDict({"arrays": message.content["arrays"], "config": config})
    return Message(content=content, dst_node_id=1, message_type="train")


def context(d: Daemon) -> Context:
    return Context(run_id=1, node_id=1, node_config=d.node_config, state=RecordDict(), run_config={})


def versions(d: Daemon) -> list[int]:
    return [v["version"] for v in d.client.call("GET", "/v1/adapters")["versions"]]


def test_the_strategy_signs_each_rounds_global_version_for_the_bundle():
    message, _ = round_message(2)
    config = message.content["config"]
    data = bytes(config[GLOBAL_FILE])
    signature, key_id, sequence = (str(config[k]) for k in (GLOBAL_SIGNATURE, GLOBAL_KEY, GLOBAL_SEQUENCE))
    signed = verify(data, BUNDLE.digest, signature, key_id, (FLEET.public_key,), sequence)
    assert signed == (FLEET.public_key, int(config[GLOBAL_SEQUENCE]))
    assert config["server-round"] == 2


def test_a_round_for_another_bundle_is_refused_and_changes_nothing(daemon):
    message, _ = round_message()
    with pytest.raises(
        RoundRefused, match=r"refused: the round is for bundle 0{16}, the daemon on this device serves " + BUNDLE.digest[:16]
    ):
        train_round(with_config(message, **{"bundle-digest": "0" * 64}), context(daemon))
    assert versions(daemon) == [0] and daemon.client.call("GET", "/v1/jobs")["jobs"] == []


def test_a_tampered_global_version_is_refused_by_the_daemon_which_keeps_its_active_version(daemon):
    train_round(round_message(1)[0], context(daemon))  # a good round first: the daemon holds versions 1 and 2
    active = daemon.client.call("GET", "/v1/adapters")["active"]
    message, _ = round_message(2)
    data = bytearray(message.content["config"][GLOBAL_FILE])
    data[len(data) // 2] ^= 1
    with pytest.raises(
        RoundRefused, match=r"refused: POST /v1/adapters\?activate=true: 403: the signature by fleet key .* does not verify"
    ):
        train_round(with_config(message, **{GLOBAL_FILE: bytes(data)}), context(daemon))
    assert versions(daemon) == [0, 1, 2] and len(daemon.client.call("GET", "/v1/jobs")["jobs"]) == 1
    assert daemon.client.call("GET", "/v1/adapters")["active"] == active


def test_a_good_round_trains_in_the_daemon_from_the_global_version_and_replies_adapters_and_examples(daemon):
    message, global_adapters = round_message()
    reply = train_round(message, context(daemon))
    examples = int(reply.content["metrics"][EXAMPLES])
    (job,) = daemon.client.call("GET", "/v1/jobs")["jobs"]
    stored = daemon.client.call("GET", "/v1/samples")["count"]
    assert stored == N_SAMPLES
    assert examples == job["examples"] == job["n_train"] and job["n_train"] + job["n_val"] == stored and examples > 0
    assert job["start_version"] == 1 and job["options"]["epochs"] == 3  # the imported global version
    assert versions(daemon) == [0, 1, 2]
    sent = from_record(reply.content["arrays"], len(BUNDLE.taps))
    kept = np.load(io.BytesIO(daemon.client.call("GET", "/v1/adapters/2/download")), allow_pickle=False)
    for t, ((a, b), (_, b0)) in enumerate(zip(sent, global_adapters)):
        np.testing.assert_array_equal(a, kept[f"A.{t}"])
        np.testing.assert_array_equal(b, kept[f"B.{t}"])
        assert not np.allclose(b, b0)  # trained, not echoed
    history = daemon.client.call("GET", "/v1/adapters")["history"]
    assert (1 in history) == bool(reply.content["metrics"]["global-activated"])  # activated only through the gate


def test_the_aggregated_adapters_of_each_round_reach_the_daemon_signed_once(daemon):
    h = BUNDLE.head
    strategy = SignedAdapterStrategy(
        GlobalSigner(BUNDLE, FLEET),
        Aggregation.EXACT,
        h.rank,
        len(BUNDLE.taps),
        min_available_nodes=1,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        fraction_evaluate=1.0,
    )
    strategy.current = [(a.copy(), np.zeros((h.num_outputs, h.rank), np.float32)) for a in h.a_init]
    config = ConfigRecord({"bundle-digest": BUNDLE.digest, "local-epochs": 2, "learning-rate": 0.05})
    arrays, sent, received, first_train = to_record(strategy.current), [], [], None
    for server_round in (1, 2):
        sent.append(from_record(arrays, len(BUNDLE.taps)))
        (message,) = strategy.configure_train(server_round, arrays, config, OneNode())  # type: ignore[arg-type]
        first_train = first_train or message
        reply = train_round(message, context(daemon))
        aggregated, metrics = strategy.aggregate_train(server_round, [reply])
        assert aggregated is not None and metrics is not None and metrics[EXAMPLES] == reply.content["metrics"][EXAMPLES]
        arrays = aggregated
        (evaluate,) = strategy.configure_evaluate(server_round, arrays, config, OneNode())  # type: ignore[arg-type]
        received.append(receive_round(evaluate, context(daemon)).content)
    # 1 the initial global, 2 its local result, 3 round 1's aggregate (received after round 1 and the start of
    # round 2: one signed file, stored once), 4 round 2's local result, 5 round 2's aggregate
    assert versions(daemon) == [0, 1, 2, 3, 4, 5]
    assert [daemon.client.call("GET", f"/v1/jobs/{n}")["start_version"] for n in (1, 2)] == [1, 3]
    assert [int(r["metrics"]["global-version"]) for r in received] == [3, 5]
    assert [int(r["metrics"]["global-round"]) for r in received] == [1, 2]
    final = from_record(arrays, len(BUNDLE.taps))
    for version, expected in ((1, sent[0]), (3, sent[1]), (5, final)):
        got = np.load(io.BytesIO(daemon.client.call("GET", f"/v1/adapters/{version}/download")), allow_pickle=False)
        for t, (a, b) in enumerate(expected):
            np.testing.assert_array_equal(got[f"A.{t}"], a)
            np.testing.assert_array_equal(got[f"B.{t}"], b)
    assert not all(np.allclose(b, 0) for _, b in sent[1])  # round 2 starts from the trained aggregate, not the initial head
    last = received[-1]["metrics"]
    active = daemon.client.call("GET", "/v1/adapters")["active"]
    assert int(last["active-version"]) == active and (active == 5) == bool(last["global-activated"])  # the gate decided
    assert ("held-out accuracy" in str(received[-1]["gate"]["gate"])) and "local-accuracy" in last
    # an old signed version sent again cannot roll the device back
    with pytest.raises(RoundRefused, match=r"409: sequence \d+ is not above \d+, the newest fleet version this device holds \(version 5\)"):
        train_round(first_train, context(daemon))
    assert versions(daemon) == [0, 1, 2, 3, 4, 5] and daemon.client.call("GET", "/v1/adapters")["active"] == active


def ridge_strategy(model: Any) -> Any:
    from s2fleet.apps import RidgeStart

    h = BUNDLE.head
    return SignedAdapterStrategy(
        GlobalSigner(BUNDLE, FLEET),
        Aggregation.EXACT,
        h.rank,
        len(BUNDLE.taps),
        ridge_start=RidgeStart(model.head.tap_sizes, model.head.scaling),
        min_available_nodes=1,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        fraction_evaluate=1.0,
    )


class TwoNodes:
    def get_node_ids(self) -> list[int]:
        return [1, 2]


def test_a_ridge_round_through_daemons_gives_exactly_the_simulated_ridge_fit_and_reaches_them_signed(tmp_path):
    from s2fleet.aggregate import delta
    from s2fleet.apps import ridge_statistics
    from s2rt.data import Samples
    from s2rt.session import Model

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2 * N_SAMPLES, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 1).astype(int)
    shards = [np.flatnonzero(y == 0), np.flatnonzero(y > 0)]  # label-skewed: one device sees one class only
    daemons: list[Daemon] = []
    try:
        for k in range(2):
            (tmp_path / f"d{k}").mkdir()
            daemons.append(Daemon(tmp_path / f"d{k}"))
        for d, idx in zip(daemons, shards):
            d.client.call("POST", "/v1/samples", {"x": x[idx].tolist(), "y": y[idx].tolist()})
        model = Model(BUNDLE)
        h = BUNDLE.head
        initial = to_record([(a.copy(), np.zeros((h.num_outputs, h.rank), np.float32)) for a in h.a_init])
        config = ConfigRecord({"bundle-digest": BUNDLE.digest, "local-epochs": 2, "learning-rate": 0.05, "logit-adjustment": 0.5})
        through, simulated = ridge_strategy(model), ridge_strategy(model)
        messages = list(through.configure_train(1, initial, config, TwoNodes()))  # type: ignore[arg-type]
        assert [m.content["config"]["task"] for m in messages] == ["statistics", "statistics"]
        replies = [train_round(m, context(d)) for m, d in zip(messages, daemons)]
        assert [d.client.call("GET", "/v1/jobs")["jobs"] for d in daemons] == [[], []]  # sums, no training
        sim_replies = [
            Message(content=ridge_statistics(model, Samples(x[idx], y[idx]), m, context(d)), reply_to=m)
            for m, d, idx in zip(messages, daemons, shards)
        ]
        got, _ = through.aggregate_train(1, replies)
        want, _ = simulated.aggregate_train(1, sim_replies)
        assert got is not None and want is not None
        for r, s_ in zip(replies, sim_replies):
            for key in ("gram", "cross", "held-out-gram", "held-out-cross"):
                np.testing.assert_allclose(r.content["arrays"][key].numpy(), s_.content["arrays"][key].numpy(), rtol=1e-5, atol=1e-5)
            assert r.content["metrics"][EXAMPLES] == s_.content["metrics"][EXAMPLES] > 0
        assert through.ridge_choice is not None and through.ridge_choice["lambda"] == simulated.ridge_choice["lambda"]
        assert through.ridge_choice["lambda_chosen_by"] == "held-out squared error" and through.ridge_choice["held_out_examples"] > 0
        taps = len(BUNDLE.taps)
        for dg, dw in zip(delta(from_record(got, taps)), delta(from_record(want, taps))):
            np.testing.assert_allclose(dg, dw, rtol=1e-5, atol=1e-6 * np.abs(dw).max())
        # the solved version goes out signed, as every round's, and each daemon imports it through its gate
        for m, d in zip(through.configure_evaluate(1, got, config, TwoNodes()), daemons):  # type: ignore[arg-type]
            received = receive_round(m, context(d)).content["metrics"]
            stored = np.load(io.BytesIO(d.client.call("GET", f"/v1/adapters/{int(received['global-version'])}/download")))
            for t, (a, b) in enumerate(from_record(got, taps)):
                np.testing.assert_array_equal(stored[f"A.{t}"], a)
                np.testing.assert_array_equal(stored[f"B.{t}"], b)
        # round 2 trains in the daemon with the round's logit adjustment
        (message,) = through.configure_train(2, got, config, OneNode())  # type: ignore[arg-type]
        train_round(message, context(daemons[0]))
        (job,) = daemons[0].client.call("GET", "/v1/jobs")["jobs"]
        assert job["options"]["logit_adjustment"] == 0.5
    finally:
        for d in daemons:
            d.stop()


def test_a_round_with_an_unknown_task_is_refused(daemon):
    message, _ = round_message()
    with pytest.raises(RoundRefused, match=r"refused: unknown task 'gossip'; this device knows adapters, statistics"):
        train_round(with_config(message, task="gossip"), context(daemon))
