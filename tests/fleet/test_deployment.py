"""A real Flower deployment on loopback: a SuperLink with TLS, SuperNode authentication and
an SQLite state file, three SuperNodes (each with its own key and its own shard of HAR),
two rounds submitted with `flwr run`. The ServerApp writes the global adapters it
aggregated; they have the bundle's shapes, moved from the initial ones, and score no worse.
A SuperNode whose key was never registered is refused.

Every process the test starts is stopped in a `finally`, also when an assertion fails.
Needs the fleet extra (flwr): `make test` runs it in .venv-fleet (marked slow: about a minute).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from s2conv import ConvertOptions, convert
from s2fleet.device import global_accuracy
from s2fleet.keys import node, tls
from s2fleet.partition import partition
from s2rt.bundle import write_bundle
from s2rt.session import Model

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
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, log in self.started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            log.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # SuperLink/SuperNode spawn flower-superexec by name
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("runtime", "converter", "fleet"))
    env["FLWR_HOME"] = str(tmp_path / "flwr-home")
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env.pop("PYTEST_CURRENT_TEST", None)
    (tmp_path / "logs").mkdir()
    running = Processes(env, tmp_path / "logs")
    try:
        yield running
    finally:
        running.stop()
        leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
        for pid in leftovers:  # a flower-superexec that outlived its parent still names our temp dir
            os.kill(int(pid), signal.SIGKILL)
        assert not leftovers, f"processes outlived the test: {leftovers}"


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


def read_test(path: Path, model: Model) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as f:
        return f["x"].astype(np.float32).reshape(-1, *model.bundle.input.shape), f["y"]


def flwr(procs: Processes, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "flwr"), *args], env=procs.env, cwd=procs.logs, capture_output=True, text=True, timeout=timeout)


def test_two_rounds_through_a_tls_superlink_with_authenticated_supernodes(tmp_path: Path, procs: Processes):
    bundle = tmp_path / "har.s2l"
    write_bundle(convert(MODELS / "har_mlp.onnx", ConvertOptions(rank=8)), bundle)
    data, test = shards(tmp_path)
    ca, cert, key = tls(tmp_path / "tls")
    link, fleet_grpc, control_grpc = free_port(), free_port(), free_port()
    logs = procs.logs

    # the fleet server: TLS on every API, only registered SuperNodes, state in an SQLite file
    database = tmp_path / "superlink.db"
    superlink = procs.start(
        "superlink",
        [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
         "--enable-supernode-auth", "--database", str(database), "--disable-runtime-dependency-installation",
         "--host", "127.0.0.1", "--port", str(link),
         "--fleet-api-address", f"127.0.0.1:{fleet_grpc}", "--control-api-address", f"127.0.0.1:{control_grpc}"],
    )  # fmt: skip
    wait_for(lambda: listening(link) or superlink.poll() is not None, 60, "the SuperLink", [logs / "superlink.log"])
    assert superlink.poll() is None, (logs / "superlink.log").read_text()

    home = Path(procs.env["FLWR_HOME"])
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{LINK}"\n\n[superlink.{LINK}]\naddress = "127.0.0.1:{link}"\nroot-certificates = "{ca}"\n'
    )

    # each device's key pair; the operator registers the public halves
    keys = [node(tmp_path / "keys" / f"device{k}") for k in range(DEVICES + 1)]
    for private, public in keys[:DEVICES]:
        done = flwr(procs, "supernode", "register", str(public), LINK)
        assert done.returncode == 0, done.stdout + done.stderr

    def supernode(name: str, private: Path, config: str) -> subprocess.Popen:
        env = dict(procs.env, FLWR_HOME=str(tmp_path / f"home-{name}"))
        return procs.start(
            name,
            [str(BIN / "flower-supernode"), "--root-certificates", str(ca), "--superlink", f"127.0.0.1:{link}",
             "--auth-supernode-private-key", str(private), "--node-config", config,
             "--host", "127.0.0.1", "--port", str(free_port())],
            env=env,
        )  # fmt: skip

    nodes = [
        supernode(f"supernode{k}", keys[k][0], f'bundle="{bundle}" data="{data[k]}" partition-id={k}') for k in range(DEVICES)
    ]
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
        assert a.shape == want_a.shape and b.shape == want_b.shape
        assert not np.allclose(b, b0)  # B starts at zero: the devices' training reached the server
    assert report["refused"] == []
    assert len(report["accuracy"]) == ROUNDS + 1
    x, y = read_test(test, model)
    assert report["accuracy"][-1] == pytest.approx(global_accuracy(model, final, x, y))
    assert report["accuracy"][-1] >= report["accuracy"][0]

    # the unregistered device never got a node id: it keeps being refused (or gave up)
    stranger_log = (logs / "stranger.log").read_text(errors="replace")
    assert "PERMISSION_DENIED" in stranger_log or "not authorized" in stranger_log.lower() or stranger.poll() not in (None, 0), stranger_log[-3000:]
    assert database.stat().st_size > 0
