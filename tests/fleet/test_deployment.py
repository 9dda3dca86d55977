"""A real Flower deployment on loopback, the product path: a SuperLink with TLS, SuperNode
authentication and an SQLite state file; beside each SuperNode a real `s2rt serve` daemon
(started with --fleet-key, --trusted-key and a token) that the device's ClientApp drives.

- Two rounds by `flwr run`: every round's global version goes out signed by the fleet key;
  the server's final global version is the exact aggregate of what the daemons trained in
  the last round, and it reaches every daemon (stored as a fleet version; served where the
  daemon's own accuracy gate accepts it). A device whose daemon serves another bundle
  refuses every round and is named in the report; its daemon is untouched. A SuperNode
  whose key was never registered is refused by the SuperLink.
- A closed-form round (`start = "ridge"`): the daemons send their ridge sums (no job), the
  server's fit is that of the daemons' training samples with lambda chosen by their held-out
  sums, and the signed solved version reaches every daemon.
- A device that drops out mid-round (its daemon hangs, its SuperNode stops): the round goes
  on with the others (min-replies), the report names the device.
- A staged bundle rollout through the same deployment (`mode="rollout"`): the canary first,
  then the rest; a device whose daemon does not trust the bundle's key refuses it, one whose
  daemon is down is unreachable; the outcome table is in the JSON report.
- The SQLite state outlives the SuperLink: restarted on it, it lets a registered device back in.

Every process the tests start is stopped at the end of the module, also when an assertion
fails. Needs the fleet extra (flwr): `make test` runs it in .venv-fleet (marked slow).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from helpers.daemon import Daemon
from helpers.keys import test_key
from s2conv import ConvertOptions, convert
from s2fleet import ridge
from s2fleet.aggregate import Aggregation, Update, aggregate, delta
from s2fleet.device import global_accuracy
from s2fleet.keys import node, tls
from s2fleet.partition import partition
from s2rt.bundle import write_bundle
from s2rt.bundle.signing import sign_bundle_bytes
from s2rt.data import Samples
from s2rt.session import Model
from s2rt.trust import open_trusted

# flwr's import calls click functions that click now deprecates (the suite turns warnings into errors)
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:'click\\.utils\\..*' is deprecated:DeprecationWarning")]

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
BIN = Path(sys.executable).parent
DEVICES, ROUNDS, EPOCHS, SAMPLES = 2, 2, 3, 600  # DEVICES members, and one more device on another bundle
RUN_TIMEOUT = 300.0
LINK = "local-fleet"  # the connection name in $FLWR_HOME/config.toml
TOKEN = "fleet-deployment-token-0123456789"
FLEET, TRUSTED, STRANGER = test_key(5), test_key(3), test_key(4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout: float, what: str, logs: list[Path], every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
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


@pytest.fixture(scope="module")
def procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    tmp_path = tmp_path_factory.mktemp("fleet")
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


def convert_signed(path: Path, rank: int, seed: int, key) -> Path:
    write_bundle(convert(MODELS / "har_mlp.onnx", ConvertOptions(rank=rank, seed=seed)), path)
    path.write_bytes(sign_bundle_bytes(path.read_bytes(), key))
    return path


@dataclass
class Fleet:
    procs: Processes
    tmp: Path
    link: int
    tls_files: tuple[Path, Path, Path]
    database: Path
    bundle: Path  # the fleet's bundle (signed by TRUSTED)
    test: Path
    superlink: subprocess.Popen
    keys: list[tuple[Path, Path]] = field(default_factory=list)
    node_ids: list[int] = field(default_factory=list)  # per device, as registered
    daemons: list[Daemon] = field(default_factory=list)  # DEVICES members, then the one on another bundle
    supernodes: list[subprocess.Popen] = field(default_factory=list)
    configs: list[str] = field(default_factory=list)
    last_run: int = 0

    @property
    def logs(self) -> Path:
        return self.procs.logs

    def supernode(self, name: str, private: Path, config: str, port: int | None = None) -> subprocess.Popen:
        env = dict(self.procs.env, FLWR_HOME=str(self.tmp / f"home-{name}"))
        return self.procs.start(
            name,
            [str(BIN / "flower-supernode"), "--root-certificates", str(self.tls_files[0]), "--superlink", f"127.0.0.1:{port or self.link}",
             "--auth-supernode-private-key", str(private), "--node-config", config,
             "--host", "127.0.0.1", "--port", str(free_port())],
            env=env,
        )  # fmt: skip

    def submit(self, *overrides: str) -> int:
        submitted = flwr(self.procs, "run", str(ROOT / "fleet" / "deploy"), LINK, "--format", "json", "-c", " ".join(overrides))
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        return int(json.loads(submitted.stdout)["run-id"])

    def run(self, done: Callable[[], bool], *overrides: str) -> str:
        """`flwr run` the deployment app, wait for `done()` (the ServerApp's last write), then for the run's end; its status."""
        run_id = self.last_run = self.submit(*overrides)
        self.wait(run_id, done)
        return self.wait_finished(run_id)

    def wait(self, run_id: int, done: Callable[[], bool]) -> None:
        wait_for(done, RUN_TIMEOUT, f"run {run_id}'s output", sorted(self.logs.glob("*.log")))

    def wait_finished(self, run_id: int) -> str:
        """The run's final status (`flwr ls`, polled once a second: each call is a CLI process)."""
        status: list[str] = []

        def finished() -> bool:
            listed = flwr(self.procs, "ls", LINK, "--format", "json")
            runs = json.loads(listed.stdout).get("runs", []) if listed.returncode == 0 else []
            status[:] = [str(r["status"]) for r in runs if int(r["run-id"]) == run_id]
            return bool(status) and status[0].startswith("finished")

        wait_for(finished, 60, f"run {run_id} to finish", sorted(self.logs.glob("*.log")), every=1.0)
        return status[0]


def report_says(path: Path, rounds: int) -> Callable[[], bool]:
    """Whether the training report at `path` has `rounds` rounds completed (or a failure)."""

    def done() -> bool:
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):  # not there yet (it is replaced atomically, never half-written)
            return False
        return bool(report["completed"] == rounds or report["failed"])

    return done


def member_shards() -> list[tuple[np.ndarray, np.ndarray]]:
    with np.load(MODELS / "data" / "har_ft.npz") as f:
        x, y = f["x"], f["y"]
    keep = np.random.default_rng(0).permutation(len(y))[:SAMPLES]
    x, y = x[keep], y[keep]
    return [(x[i], y[i]) for i in partition("iid", y, DEVICES + 1, 0)]


@pytest.fixture(scope="module")
def fleet(procs: Processes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("deployment")
    bundle = convert_signed(tmp / "har.s2l", 8, 0, TRUSTED)
    other = convert_signed(tmp / "har_r4.s2l", 4, 0, STRANGER)  # another bundle, trusted by its own daemon only
    with np.load(MODELS / "data" / "har_test.npz") as f:
        keep = np.random.default_rng(1).permutation(len(f["y"]))[:600]
        np.savez(tmp / "test.npz", x=f["x"][keep], y=f["y"][keep])
    for key, name in ((FLEET, "fleet"), (TRUSTED, "trusted"), (STRANGER, "stranger")):
        key.save(tmp / name)
    (tmp / "tokens").write_text(TOKEN + "\n")
    (tmp / "tokens").chmod(0o600)

    tls_files = tls(tmp / "tls")
    link = free_port()
    database = tmp / "superlink.db"
    superlink = start_superlink(procs, "superlink", tls_files, database, link)
    home = Path(procs.env["FLWR_HOME"])
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{LINK}"\n\n[superlink.{LINK}]\naddress = "127.0.0.1:{link}"\nroot-certificates = "{tls_files[0]}"\n'
    )
    f = Fleet(procs, tmp, link, tls_files, database, bundle, tmp / "test.npz", superlink)

    # each device: its daemon (with the fleet key, a trusted key for bundles, a token) and its samples
    marker = {k: v for k, v in procs.env.items() if k.startswith("S2FLEET_TEST_RUN")}
    for k, (x, y) in enumerate(member_shards()):
        folder = tmp / f"device{k}"
        folder.mkdir()
        served, trusted = (bundle, "trusted.pub") if k < DEVICES else (other, "stranger.pub")
        args = [str(served), "--state-dir", str(folder / "state"), "--port", "0", "--token-file", str(tmp / "tokens"),
                "--fleet-key", str(tmp / "fleet.pub"), "--trusted-key", str(tmp / trusted)]  # fmt: skip
        daemon = Daemon(args, folder / "daemon.log", env=marker)
        f.daemons.append(daemon)
        daemon.client.headers["authorization"] = f"Bearer {TOKEN}"
        assert daemon.client.post("/v1/samples", json={"x": x.tolist(), "y": y.tolist()}).status_code == 201
        f.configs.append(f'daemon-url="{daemon.url}" daemon-token-file="{tmp / "tokens"}" rollout-dir="{folder / "rollout"}"')

    # each device's SuperNode key; the operator registers the public halves (one more key stays unregistered)
    f.keys = [node(tmp / "keys" / f"device{k}") for k in range(DEVICES + 2)]
    for _, public in f.keys[: DEVICES + 1]:
        done = flwr(procs, "supernode", "register", str(public), LINK, "--format", "json")
        assert done.returncode == 0, done.stdout + done.stderr
        f.node_ids.append(int(re.search(r'"node-id":\s*"?(\d+)', done.stdout).group(1)))  # type: ignore[union-attr]
    f.supernodes = [f.supernode(f"supernode{k}", f.keys[k][0], f.configs[k]) for k in range(DEVICES + 1)]
    try:
        yield f
    finally:
        for daemon in f.daemons:
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon.proc.pid, signal.SIGCONT)
            daemon.kill()


def versions(daemon: Daemon) -> list[dict]:
    return daemon.client.get("/v1/adapters").json()["versions"]


def download(daemon: Daemon, version: int, taps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    data = daemon.client.get(f"/v1/adapters/{version}/download").content
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        return [(f[f"A.{t}"], f[f"B.{t}"]) for t in range(taps)]


def read_out(out: Path, taps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    with np.load(out, allow_pickle=False) as f:
        return [(f[f"A.{t}"], f[f"B.{t}"]) for t in range(taps)]


def train_overrides(f: Fleet, out: Path, **extra: object) -> list[str]:
    settings = {"bundle": f'"{f.bundle}"', "fleet-key": f'"{f.tmp / "fleet"}"', "out": f'"{out}"', "test": f'"{f.test}"',
                "rounds": ROUNDS, "local-epochs": EPOCHS, "min-nodes": DEVICES + 1, "min-replies": DEVICES,
                "aggregation": '"exact"', "round-timeout": 120.0} | extra  # fmt: skip
    return [f"{k}={v}" for k, v in settings.items()]


def test_signed_rounds_reach_the_daemons_and_strangers_are_refused(fleet: Fleet):
    f = fleet
    stranger = f.supernode("stranger", f.keys[DEVICES + 1][0], f.configs[0])
    out = f.tmp / "server" / "global.npz"
    assert f.run(report_says(out.with_suffix(".json"), ROUNDS), *train_overrides(f, out)) == "finished:completed"
    model = Model.open(str(f.bundle))
    taps = len(model.bundle.taps)
    final = read_out(out, taps)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["completed"] == ROUNDS and report["failed"] is None and report["signed-by"] == FLEET.key_id
    assert len(report["accuracy"]) == ROUNDS + 1 and report["accuracy"][-1] >= report["accuracy"][0]
    x, y = np.load(f.test)["x"], np.load(f.test)["y"]
    assert report["accuracy"][-1] == pytest.approx(global_accuracy(model, final, x.astype(np.float32), y))

    # the device on another bundle refused every round, by name, and its daemon holds nothing new
    other = str(f.node_ids[DEVICES])
    fleet_digest, other_digest = (d.client.get("/v1/model").json()["bundle_digest"] for d in (f.daemons[0], f.daemons[DEVICES]))
    for r in map(str, range(1, ROUNDS + 1)):
        for stage in ("train", "evaluate"):
            reason = report["devices"][r][other][stage]
            assert reason == f"refused: the round is for bundle {fleet_digest[:16]}, the daemon on this device serves {other_digest[:16]}"
    assert [v["version"] for v in versions(f.daemons[DEVICES])] == [0]

    # the server's final version is the exact aggregate of what the daemons trained in the last round,
    # from the version they received after round 1; and it reached every daemon, signed, as a fleet version
    updates, start = [], None
    for k, daemon in enumerate(f.daemons[:DEVICES]):
        listed = versions(daemon)
        fleet_versions = {v["fleet_round"]: v for v in listed if v["origin"] == "fleet"}
        assert sorted(fleet_versions) == list(range(ROUNDS + 1)), listed  # the initial global, then each round's aggregate
        jobs = daemon.client.get("/v1/jobs").json()["jobs"]
        last_job = max(jobs, key=lambda j: j["id"])
        assert len(jobs) == ROUNDS and last_job["start_version"] == fleet_versions[ROUNDS - 1]["version"]
        updates.append(Update(download(daemon, last_job["result"]["version"], taps), last_job["examples"]))
        start = download(daemon, fleet_versions[ROUNDS - 1]["version"], taps)
        received = fleet_versions[ROUNDS]
        for (a, b), (want_a, want_b) in zip(download(daemon, received["version"], taps), final):
            np.testing.assert_array_equal(a, want_a)
            np.testing.assert_array_equal(b, want_b)
        # the device's gate decided whether it is served; the report says so, with the gate's reason
        outcome = report["devices"][str(ROUNDS)][str(f.node_ids[k])]["evaluate"]
        active = daemon.client.get("/v1/adapters").json()["active"]
        assert bool(outcome["global-activated"]) == (active == received["version"]), outcome
        assert "held-out accuracy" in outcome["gate"]
    activated = [report["devices"][str(ROUNDS)][str(n)]["evaluate"]["global-activated"] for n in f.node_ids[:DEVICES]]
    assert sum(activated) >= 1, report["devices"][str(ROUNDS)]  # with IID shards the global version serves someone
    for got, want in zip(aggregate(Aggregation.EXACT, updates, model.bundle.head.rank, start), final):
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)

    # the unregistered device was refused at activation and gave up
    wait_for(lambda: stranger.poll() is not None, 60, "the unregistered SuperNode to give up", [f.logs / "stranger.log"])
    assert stranger.returncode != 0, (f.logs / "stranger.log").read_text()[-3000:]
    assert "[code: 2004] Failed to activate SuperNode" in (f.logs / "stranger.log").read_text()
    superlink_log = (f.logs / "superlink.log").read_text()
    assert superlink_log.count('/v1/fleet/activate-node HTTP/1.1" 412') == 1
    assert "No SuperNode found with the given public key" in superlink_log


def test_a_ridge_round_through_the_deployment_is_the_fit_of_the_daemons_samples(fleet: Fleet):
    """start = "ridge": round 1 is the daemons' ridge sums (no job), solved, signed and imported by each daemon."""
    f = fleet
    jobs = [len(d.client.get("/v1/jobs").json()["jobs"]) for d in f.daemons[:DEVICES]]
    active = [d.client.get("/v1/adapters").json()["active"] for d in f.daemons[:DEVICES]]
    out = f.tmp / "server" / "ridge.npz"
    overrides = train_overrides(f, out, rounds=1, start='"ridge"')
    assert f.run(report_says(out.with_suffix(".json"), 1), *overrides) == "finished:completed"
    report = json.loads(out.with_suffix(".json").read_text())
    model = Model.open(str(f.bundle))
    head, taps = model.head, len(model.bundle.taps)
    final = read_out(out, taps)
    sums = [ridge.split_statistics(model, Samples(x.astype(np.float32), y)) for x, y in member_shards()[:DEVICES]]
    dw, choice = ridge.fit_chosen([s[0] for s in sums], [s[1] for s in sums], head.tap_width)  # type: ignore[attr-defined]
    assert report["ridge"]["lambda"] == choice.lam and report["ridge"]["lambda_chosen_by"] == "held-out squared error"
    assert report["ridge"]["held_out_examples"] == sum(s[1].examples for s in sums) > 0
    np.testing.assert_allclose(np.concatenate(delta(final), axis=1) * head.scaling, dw, rtol=1e-4, atol=1e-4 * np.abs(dw).max())  # type: ignore[attr-defined]
    assert report["accuracy"][1] > report["accuracy"][0] + 0.1
    for k, daemon in enumerate(f.daemons[:DEVICES]):
        assert len(daemon.client.get("/v1/jobs").json()["jobs"]) == jobs[k]  # sums from the cache, no training
        newest = max((v for v in versions(daemon) if v["origin"] == "fleet"), key=lambda v: v["version"])
        for (a, b), (want_a, want_b) in zip(download(daemon, newest["version"], taps), final):
            np.testing.assert_array_equal(a, want_a)
            np.testing.assert_array_equal(b, want_b)
        # the daemons serve again what they served before: the rollout test judges a new bundle against that
        assert daemon.client.post(f"/v1/adapters/{active[k]}/activate").status_code == 200


def connections(port: int) -> set[str]:
    """The established TCP connections to `port` on loopback, by the client's address (the kernel accepts them
    even while the listening process is stopped)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if state == "01" and int(local.split(":")[1], 16) == port:
            found.add(remote)
    return found


def test_a_device_that_drops_out_mid_round_leaves_the_round_to_the_others(fleet: Fleet):
    f = fleet
    gone = DEVICES - 1
    daemon = f.daemons[gone]
    before = [v["version"] for v in versions(daemon)]
    port = int(daemon.url.rsplit(":", 1)[1])
    known = connections(port)
    os.kill(daemon.proc.pid, signal.SIGSTOP)  # the device's daemon hangs: its ClientApp waits mid-round
    out = f.tmp / "server" / "dropout.npz"
    # every connected device takes part; a round needs DEVICES of them connected and DEVICES - 1 updates
    overrides = train_overrides(f, out, rounds=1, **{"min-nodes": DEVICES, "min-replies": DEVICES - 1})
    run_id = f.submit(*overrides)
    logs = sorted(f.logs.glob("*.log"))
    wait_for(lambda: connections(port) - known, 120, "the device's ClientApp to reach its hung daemon", logs)
    signal_group(f.supernodes[gone], signal.SIGTERM)  # the device leaves in the middle of round 1
    f.supernodes[gone].wait(timeout=30)
    f.wait(run_id, report_says(out.with_suffix(".json"), 1))
    assert f.wait_finished(run_id) == "finished:completed"
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["completed"] == 1 and report["failed"] is None, report
    dropped = report["devices"]["1"][str(f.node_ids[gone])]["train"]
    assert isinstance(dropped, str) and ("Node Unavailable" in dropped or "no reply" in dropped), dropped
    for k in range(DEVICES - 1):  # the round went on with the devices still there
        assert report["devices"]["1"][str(f.node_ids[k])]["train"]["num-examples"] > 0

    # nothing the device committed is lost: restarted on its state directory, its daemon has every version
    os.kill(daemon.proc.pid, signal.SIGCONT)
    daemon.stop()
    f.daemons[gone] = Daemon(daemon.args, daemon.log_path, env={k: v for k, v in f.procs.env.items() if k.startswith("S2FLEET")})
    f.daemons[gone].client.headers["authorization"] = f"Bearer {TOKEN}"
    assert [v["version"] for v in versions(f.daemons[gone])][: len(before)] == before
    url = f.daemons[gone].url
    f.configs[gone] = re.sub(r'daemon-url="[^"]*"', f'daemon-url="{url}"', f.configs[gone])
    f.supernodes[gone] = f.supernode("supernode-back", f.keys[gone][0], f.configs[gone])  # the device rejoins


def test_a_staged_bundle_rollout_through_the_fleet(fleet: Fleet):
    f = fleet
    new = convert_signed(f.tmp / "har_v2.s2l", 8, 1, TRUSTED)
    digest = open_trusted(new).digest
    out = f.tmp / "server" / "rollout.json"
    settings = {"mode": '"rollout"', "bundle": f'"{new}"', "out": f'"{out}"', "min-nodes": DEVICES + 1,
                "canary-nodes": f'"{f.node_ids[0]}"', "train-epochs": 5, "max-drop": 0.2, "stage-timeout": 120.0}  # fmt: skip
    assert f.run(out.exists, *[f"{k}={v}" for k, v in settings.items()]) == "finished:completed"
    report = json.loads(out.read_text())
    rows = {int(n): row for n, row in report["devices"].items()}
    assert report["failed"] is None and report["bundle-digest"] == digest and len(rows) == DEVICES + 1, rows
    assert rows[f.node_ids[0]]["stage"] == "canary" and rows[f.node_ids[0]]["status"] == "deployed", rows
    for k in range(1, DEVICES):
        assert rows[f.node_ids[k]]["stage"] == "rest" and rows[f.node_ids[k]]["status"] == "deployed", rows
    refused = rows[f.node_ids[DEVICES]]  # its daemon trusts another key
    assert refused["stage"] == "rest" and refused["status"] == "refused" and "PUT /v1/bundle: 4" in refused["reason"], refused
    for k in range(DEVICES):
        assert f.daemons[k].client.get("/v1/model").json()["bundle_digest"] == digest
    assert f.daemons[DEVICES].client.get("/v1/model").json()["bundle_digest"] != digest
    # the operator sees the table in the run's log
    shown = flwr(f.procs, "log", str(f.last_run), LINK, "--show").stdout
    assert f"rollout of bundle {digest[:16]}" in shown and "not among the trusted keys" in shown, shown[-3000:]


def test_the_superlink_state_outlives_it(fleet: Fleet):
    """The registered devices and the runs are in the SQLite file; a SuperLink restarted on it lets a registered
    device back in without registering again."""
    f = fleet
    for process in [*f.supernodes, f.superlink]:
        signal_group(process, signal.SIGTERM)
        process.wait(timeout=30)
    with sqlite3.connect(f.database) as db:
        assert db.execute("SELECT COUNT(*) FROM node").fetchone() == (DEVICES + 1,)
        assert db.execute("SELECT COUNT(*) FROM run").fetchone() == (4,)
    again = free_port()
    start_superlink(f.procs, "superlink-restarted", f.tls_files, f.database, again)
    f.supernode("rejoined", f.keys[0][0], f.configs[0], port=again)
    restarted_log = f.logs / "superlink-restarted.log"
    wait_for(lambda: '/v1/fleet/activate-node HTTP/1.1" 200' in restarted_log.read_text(), 60, "the device to rejoin", [restarted_log])
