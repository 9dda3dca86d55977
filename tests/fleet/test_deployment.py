"""A real Flower deployment on loopback: a SuperLink with TLS, SuperNode authentication and
an SQLite state file, three SuperNodes (each with its own key and its own shard of HAR),
two rounds submitted with `flwr run`. The ServerApp writes the global adapters it
aggregated; they have the bundle's shapes, moved from the initial ones, and score no worse.
Every device receives each round's global version and stores it as an s2rt adapter state
file. A SuperNode whose key was never registered is refused. The SQLite state outlives the SuperLink:
restarted on it, the SuperLink lets a registered device back in.

Every process the test starts is stopped in a `finally`, also when an assertion fails.
Needs the fleet extra (flwr): `make test` runs it in .venv-fleet (marked slow: about a minute).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from s2conv import ConvertOptions, convert
from s2fleet.aggregate import Aggregation, aggregate, delta
from s2fleet.device import global_accuracy, local_update
from s2fleet.keys import node, tls
from s2fleet.partition import partition
from s2rt.bundle import write_bundle
from s2rt.data import Samples
from s2rt.session import Model
from s2rt.state import load_adapters

# flwr's import calls click functions that click now deprecates (the suite turns warnings into errors)
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:'click\\.utils\\..*' is deprecated:DeprecationWarning")]

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
BIN = Path(sys.executable).parent
DEVICES, ROUNDS, EPOCHS, SAMPLES = 3, 2, 3, 450
RUN_TIMEOUT = 300.0
LINK = "local-fleet"  # the connection name in $FLWR_HOME/config.toml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Processes:
    """Started processes, each in its own session: stop() ends each group, the helpers Flower spawns included."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.started = env, logs, []  # type: ignore[var-annotated]

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env or self.env, start_new_session=True)
        self.started.append((proc, log))
        return proc

    def stop(self) -> None:
        for proc, _ in self.started:
            signal_group(proc, signal.SIGTERM)
        for proc, log in self.started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
            log.close()


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the process and its group are gone
        os.killpg(proc.pid, sig)


def marked(marker: str) -> list[int]:
    """Our processes, Flower's helpers included: every descendant inherits the marker in its environment."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def end_marked(marker: str) -> None:
    """flower-superexec runs in a session of its own and outlives its parent for a while: end it too."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in marked(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while marked(marker) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    marker = f"S2FLEET_TEST_RUN={uuid.uuid4().hex}"
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # SuperLink/SuperNode spawn flower-superexec by name
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("runtime", "converter", "fleet"))
    env["FLWR_HOME"] = str(tmp_path / "flwr-home")
    env["FLWR_TELEMETRY_ENABLED"] = "0"  # nothing leaves the machine: no telemetry, no update check
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env.pop("PYTEST_CURRENT_TEST", None)
    key, value = marker.split("=")
    env[key] = value
    (tmp_path / "logs").mkdir()
    running = Processes(env, tmp_path / "logs")
    try:
        yield running
    finally:
        try:
            running.stop()
        finally:
            end_marked(marker)
        assert not marked(marker), "processes outlived the test"


def shards(tmp: Path) -> tuple[list[Path], Path]:
    with np.load(MODELS / "data" / "har_ft.npz") as f:
        x, y = f["x"], f["y"]
    keep = np.random.default_rng(0).permutation(len(y))[:SAMPLES]
    x, y = x[keep], y[keep]
    paths = []
    for k, index in enumerate(partition("shards", y, DEVICES, 0)):
        paths.append(tmp / f"device{k}.npz")
        np.savez(paths[-1], x=x[index], y=y[index])
    with np.load(MODELS / "data" / "har_test.npz") as f:
        keep = np.random.default_rng(1).permutation(len(f["y"]))[:600]
        test = tmp / "test.npz"
        np.savez(test, x=f["x"][keep], y=f["y"][keep])
    return paths, test


def same_rounds_in_one_process(bundle: Path, data: list[Path]) -> list:
    """What the deployment must return: device k trains with seed round * 1000 + k from the last global version."""
    model = Model.open(str(bundle))
    shards = [read_test(path, model) for path in data]
    model.reset_adapters()
    current = model.head.per_tap()  # type: ignore[attr-defined]
    for r in range(1, ROUNDS + 1):
        updates = [local_update(model, Samples(x, y), current, EPOCHS, 0.01, seed=r * 1000 + k) for k, (x, y) in enumerate(shards)]
        current = aggregate(Aggregation.EXACT, updates, model.bundle.head.rank, current)
    return current


def read_test(path: Path, model: Model) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as f:
        return f["x"].astype(np.float32).reshape(-1, *model.bundle.input.shape), f["y"]


def flwr(procs: Processes, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "flwr"), *args], env=procs.env, cwd=procs.logs, capture_output=True, text=True, timeout=timeout)


def start_superlink(procs: Processes, name: str, tls_files: tuple[Path, Path, Path], database: Path, port: int) -> subprocess.Popen:
    """TLS on every API, only registered SuperNodes, state in an SQLite file; every API on loopback."""
    ca, cert, key = tls_files
    superlink = procs.start(
        name,
        [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
         "--enable-supernode-auth", "--database", str(database), "--disable-runtime-dependency-installation",
         "--host", "127.0.0.1", "--port", str(port),
         "--fleet-api-address", f"127.0.0.1:{free_port()}", "--control-api-address", f"127.0.0.1:{free_port()}"],
    )  # fmt: skip
    log = procs.logs / f"{name}.log"
    wait_for(lambda: listening(port) or superlink.poll() is not None, 60, f"the SuperLink ({name})", [log])
    assert superlink.poll() is None, log.read_text()
    return superlink


def test_two_rounds_through_a_tls_superlink_with_authenticated_supernodes(tmp_path: Path, procs: Processes):
    bundle = tmp_path / "har.s2l"
    write_bundle(convert(MODELS / "har_mlp.onnx", ConvertOptions(rank=8)), bundle)
    data, test = shards(tmp_path)
    tls_files = tls(tmp_path / "tls")
    ca = tls_files[0]
    link = free_port()
    logs = procs.logs

    # the fleet server: TLS on every API, only registered SuperNodes, state in an SQLite file
    database = tmp_path / "superlink.db"
    superlink = start_superlink(procs, "superlink", tls_files, database, link)

    home = Path(procs.env["FLWR_HOME"])
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{LINK}"\n\n[superlink.{LINK}]\naddress = "127.0.0.1:{link}"\nroot-certificates = "{ca}"\n'
    )

    # each device's key pair; the operator registers the public halves
    keys = [node(tmp_path / "keys" / f"device{k}") for k in range(DEVICES + 1)]
    for _, public in keys[:DEVICES]:
        done = flwr(procs, "supernode", "register", str(public), LINK)
        assert done.returncode == 0, done.stdout + done.stderr

    def supernode(name: str, private: Path, config: str, port: int = link) -> subprocess.Popen:
        env = dict(procs.env, FLWR_HOME=str(tmp_path / f"home-{name}"))
        return procs.start(
            name,
            [str(BIN / "flower-supernode"), "--root-certificates", str(ca), "--superlink", f"127.0.0.1:{port}",
             "--auth-supernode-private-key", str(private), "--node-config", config,
             "--host", "127.0.0.1", "--port", str(free_port())],
            env=env,
        )  # fmt: skip

    received = [tmp_path / f"device{k}" / "global.npz" for k in range(DEVICES)]  # each device's copy of the global version
    configs = [f'bundle="{bundle}" data="{data[k]}" adapters="{received[k]}" partition-id={k}' for k in range(DEVICES)]
    nodes = [supernode(f"supernode{k}", keys[k][0], configs[k]) for k in range(DEVICES)]
    stranger = supernode("stranger", keys[DEVICES][0], f'bundle="{bundle}" data="{data[0]}"')

    out = tmp_path / "server" / "global.npz"
    overrides = [f'bundle="{bundle}"', f'out="{out}"', f'test="{test}"', f"rounds={ROUNDS}", f"local-epochs={EPOCHS}",
                 f"min-nodes={DEVICES}", 'aggregation="exact"']  # fmt: skip
    submitted = flwr(procs, "run", str(ROOT / "fleet" / "deploy"), LINK, "--format", "json", "-c", " ".join(overrides))
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr

    all_logs = sorted(logs.glob("*.log"))
    wait_for(lambda: out.exists(), RUN_TIMEOUT, "the ServerApp's global adapters", all_logs)
    assert all(n.poll() is None for n in nodes), "a registered SuperNode exited"

    model = Model.open(str(bundle))
    with np.load(out, allow_pickle=False) as f:
        taps = len(model.bundle.taps)
        final = [(f[f"A.{t}"], f[f"B.{t}"]) for t in range(taps)]
        initial = [(f[f"initial.A.{t}"], f[f"initial.B.{t}"]) for t in range(taps)]
    report = json.loads(out.with_suffix(".json").read_text())
    model.reset_adapters()
    for (a, b), (a0, b0), (want_a, want_b) in zip(final, initial, model.head.per_tap()):  # type: ignore[attr-defined]
        assert a.shape == want_a.shape == a0.shape and b.shape == want_b.shape == b0.shape
        assert not np.allclose(b, b0)  # B starts at zero: the devices' training reached the server
    assert report["refused"] == []
    assert len(report["accuracy"]) == ROUNDS + 1
    x, y = read_test(test, model)
    assert report["accuracy"][-1] == pytest.approx(global_accuracy(model, final, x, y))
    assert report["accuracy"][-1] >= report["accuracy"][0]

    # the rounds ran as they would in one process: round 2 started from round 1's aggregate on every device
    for got, want in zip(delta(final), delta(same_rounds_in_one_process(bundle, data))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)

    # every device holds the final global version, as an adapter state file s2rt loads
    for path in received:
        adapters, meta = load_adapters(path, model.bundle)
        assert meta["source"] == "fleet" and meta["server_round"] == ROUNDS
        for (a, b), (want_a, want_b) in zip(adapters, final):
            np.testing.assert_allclose(a, want_a, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(b, want_b, rtol=1e-6, atol=1e-7)
    assert sorted(report["device-accuracy"]) == [str(r) for r in range(1, ROUNDS + 1)]

    # the unregistered device was refused at activation and gave up
    wait_for(lambda: stranger.poll() is not None, 60, "the unregistered SuperNode to give up", [logs / "stranger.log"])
    assert stranger.returncode != 0, (logs / "stranger.log").read_text()[-3000:]
    assert "[code: 2004] Failed to activate SuperNode" in (logs / "stranger.log").read_text()
    activations = (logs / "superlink.log").read_text().count('/v1/fleet/activate-node HTTP/1.1" ')
    refusals = (logs / "superlink.log").read_text().count('/v1/fleet/activate-node HTTP/1.1" 412')
    assert (activations, refusals) == (DEVICES + 1, 1)
    assert "No SuperNode found with the given public key" in (logs / "superlink.log").read_text()

    # the SuperLink's state outlives it: the registered devices and the run are in the SQLite file,
    # and a SuperLink restarted on it lets a registered device back in without registering again
    for process in [*nodes, superlink]:
        process.terminate()
        process.wait(timeout=30)
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM node").fetchone() == (DEVICES,)
        assert db.execute("SELECT COUNT(*) FROM run").fetchone() == (1,)
    again = free_port()
    start_superlink(procs, "superlink-restarted", tls_files, database, again)
    supernode("rejoined", keys[0][0], configs[0], port=again)
    restarted_log = logs / "superlink-restarted.log"
    wait_for(lambda: '/v1/fleet/activate-node HTTP/1.1" 200' in restarted_log.read_text(), 60, "the device to rejoin", [restarted_log])
