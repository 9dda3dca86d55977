"""What one fleet round costs a device that runs `s2rt serve`: the member ClientApp against a real daemon.

    .venv-fleet/bin/python bench/fleet_member_round.py --samples 1000 --rounds 5 --daemon-python .venv/bin/python

A HAR daemon (`--fleet-key`, bearer token) holds `--samples` of the fine-tune samples;
each round the signing strategy signs the global adapters (`sign_s`), `s2fleet.member`
checks the bundle, imports the signed version through the accuracy gate, trains from it
in the daemon and downloads the result (`member_round_s`, of which `job_s` is the job
itself); the strategy aggregates the reply. Printed as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT / "converter"), str(ROOT / "fleet")]

import numpy as np  # noqa: E402
from s2conv import ConvertOptions, convert  # noqa: E402
from s2rt.bundle.signing import SigningKey  # noqa: E402
from s2rt.bundle.writer import write_bundle  # noqa: E402
from s2rt.serve.client import Client  # noqa: E402
from s2rt.trust import open_trusted  # noqa: E402

with warnings.catch_warnings():  # flwr's import calls click functions that click deprecates
    warnings.simplefilter("ignore", DeprecationWarning)
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from s2fleet.aggregate import Aggregation
    from s2fleet.apps import to_record
    from s2fleet.member import train_round
    from s2fleet.signing import GLOBAL_FILE, GlobalSigner, SignedAdapterStrategy


class OneNode:
    def get_node_ids(self) -> list[int]:
        return [1]


def start_daemon(python: str, folder: Path, key: SigningKey) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    labels = tuple((ROOT / "models" / "data" / "har_labels.txt").read_text().split())
    write_bundle(convert(ROOT / "models" / "har_mlp.onnx", ConvertOptions(labels=labels)), folder / "har.s2l")
    key.save(folder / "fleet")
    token = secrets.token_urlsafe(24)
    (folder / "tokens").write_text(token + "\n")
    log = folder / "daemon.log"
    args = [python, "-m", "s2rt", "serve", str(folder / "har.s2l"), "--state-dir", str(folder / "state"), "--port", "0"]
    args += ["--token-file", str(folder / "tokens"), "--fleet-key", str(folder / "fleet.pub")]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime"), "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        ready = [json.loads(line) for line in log.read_text().splitlines() if '"event": "ready"' in line]
        if ready:
            url = f"http://127.0.0.1:{ready[0]['port']}"
            return proc, token, {"daemon-url": url, "daemon-token-file": str(folder / "tokens")}
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"s2rt serve did not start:\n{log.read_text()}")


def rounds(folder: Path, node_config: dict[str, str], token: str, key: SigningKey, samples: int, count: int, epochs: int) -> None:
    client = Client(node_config["daemon-url"], token=token)
    with np.load(ROOT / "models" / "data" / "har_ft.npz") as f:
        x, y = f["x"][:samples], f["y"][:samples]
    client.call("POST", "/v1/samples", {"x": x.tolist(), "y": y.tolist()})
    bundle = open_trusted(folder / "har.s2l")
    h = bundle.head
    strategy = SignedAdapterStrategy(
        GlobalSigner(bundle, key), Aggregation.EXACT, h.rank, len(bundle.taps), min_available_nodes=1, min_train_nodes=1
    )
    strategy.current = [(a.copy(), np.zeros((h.num_outputs, h.rank), np.float32)) for a in h.a_init]
    arrays, config = to_record(strategy.current), ConfigRecord({"bundle-digest": bundle.digest, "local-epochs": epochs})
    context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})  # type: ignore[arg-type]
    for server_round in range(1, count + 1):
        t0 = time.perf_counter()
        (message,) = strategy.configure_train(server_round, arrays, config, OneNode())  # type: ignore[arg-type]
        t1 = time.perf_counter()
        reply = train_round(message, context)
        t2 = time.perf_counter()
        aggregated, _ = strategy.aggregate_train(server_round, [reply])
        assert aggregated is not None
        arrays = aggregated
        job: dict[str, Any] = client.call("GET", "/v1/jobs?limit=1")["jobs"][0]
        row = {
            "round": server_round,
            "sign_s": round(t1 - t0, 4),
            "member_round_s": round(t2 - t1, 3),
            "job_s": round(job["result"]["seconds"], 3),
            "examples": job["examples"],
            "global_file_bytes": len(message.content["config"][GLOBAL_FILE]),
            "val_accuracy": job["val_accuracy"],
        }
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--daemon-python", default=sys.executable, help="the interpreter that runs s2rt serve (default: this one)")
    args = parser.parse_args()
    for name in ("_run_id", "_node_id", "_task_id"):  # the identity a ServerApp process has while it runs
        setattr(TaskIdentity, name, 1)
    key = SigningKey.generate()
    with tempfile.TemporaryDirectory(prefix="s2l-member-") as folder:
        proc, token, node_config = start_daemon(args.daemon_python, Path(folder), key)
        try:
            rounds(Path(folder), node_config, token, key, args.samples, args.rounds, args.local_epochs)
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
