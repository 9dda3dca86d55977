"""The fleet table: HAR's fine-tune samples over N simulated devices, through Flower's Simulation Engine.

    make fleet-bench                      # N = 10 and 100, then N = 1000, then the split by subject and by recording
    .venv-fleet/bin/python bench/fleet_bench.py --devices 10 --json out/fleet.json

Per N and partition: the global adapters' accuracy on the shifted test split after each
round for FedAvg of A and B, exact averaging of dW = B A, the damped exact step, and
beside them each device alone and all samples in one place (same epochs in all). On the
label-sorted shards, the options measured against plain exact averaging: 20 local epochs,
a server step of 3, local logit adjustment (TrainConfig.logit_adjustment) and a closed-form
first round (`--start ridge`, s2fleet.ridge) followed by exact rounds. The bundle has
rank 8 >= 7 classes, so exact averaging is exact (s2fleet.aggregate). Split by who recorded
the samples (the fine-tune file's `subject` and `recording` arrays, s2fleet.partition): one
device per subject (N = 5) and per recording (N = 70: one subject, wrist and exercise each),
exact and the ridge round then exact.
Wall time per simulation (Ray's start-up included), the median round, the server
process's peak RSS and the largest peak RSS a device process reported (a Ray worker that
runs the simulated devices' ClientApps one after another).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT / "converter"), str(ROOT / "fleet")]

from s2fleet.simulate import FleetRun, alone, centralized, federated, load_data  # noqa: E402
from s2rt.session import Model  # noqa: E402

DATA = ROOT / "models" / "data"
RESULTS = ROOT / "bench" / "results" / "fleet.json"
AGGREGATIONS: tuple[dict[str, Any], ...] = ({"aggregation": "fedavg"}, {"aggregation": "exact"}, {"aggregation": "damped", "step": 0.5})
OPTIONS: tuple[dict[str, Any], ...] = (  # on the shards, beside plain exact averaging
    {"aggregation": "exact", "local_epochs": 20},
    {"aggregation": "damped", "step": 3.0},
    {"aggregation": "exact", "logit_adjustment": 1.0},
    {"aggregation": "exact", "start": "ridge", "learning_rate": 0.001},
)
LARGE: tuple[dict[str, Any], ...] = ({"aggregation": "exact"}, OPTIONS[-1])
BY_SOURCE: tuple[tuple[int, str], ...] = ((5, "subject"), (70, "recording"))  # one device per subject / recording of HAR's ft data


def make_bundle(out: Path) -> str:
    from s2conv import ConvertOptions, convert
    from s2rt.bundle import write_bundle

    labels = tuple((DATA / "har_labels.txt").read_text().split())
    path = out / "har_r8.s2l"
    write_bundle(convert(ROOT / "models" / "har_mlp.onnx", ConvertOptions(rank=8, labels=labels)), path)
    return str(path)


def peak_rss_mb() -> float:
    """The server process's peak RSS so far (Ray's workers are not counted: they are not its children)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(run: FleetRun, data: Any) -> dict[str, Any]:
    started = time.perf_counter()
    out = federated(run, data)
    out.pop("adapters")
    out["wall_s"] = time.perf_counter() - started
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, nargs="*", default=[10, 100], help="fleet sizes for the full table (default 10 100)")
    parser.add_argument(
        "--large", type=int, default=1000, help="one more fleet size, on the shards: exact, and the ridge round then exact (0: none)"
    )
    parser.add_argument("--partitions", nargs="*", default=["shards", "iid"])
    parser.add_argument(
        "--by-source", action=argparse.BooleanOptionalAction, default=True, help="the subject (N = 5) and recording (N = 70) rows"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp))
        data = load_data(DATA / "har_ft.npz", DATA / "har_test.npz", Model.open(bundle))
        rows: list[dict[str, Any]] = []
        for n, part, options in plan(args.devices, args.partitions, args.large, args.by_source):
            run = FleetRun(bundle, n, part, **{"rounds": args.rounds, "local_epochs": args.local_epochs, **options})
            print(f"N={n} {part} {label(asdict(run))} ...", file=sys.stderr, flush=True)
            result = one(run, data)
            row = {**asdict(run), **result, "peak_rss_mb": peak_rss_mb()}
            row.pop("bundle")
            if options == {"aggregation": "exact"}:
                row["alone"] = alone(run, data)
                row["centralized"] = centralized(run, data)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("refused",)}), file=sys.stderr, flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"commit": commit, "rows": rows}, indent=2))
    print(table(rows))
    return 0


def plan(devices: list[int], partitions: list[str], large: int, by_source: bool = True) -> list[tuple[int, str, dict[str, Any]]]:
    out = [(n, p, options) for n in devices for p in partitions for options in AGGREGATIONS]
    out += [(n, "shards", options) for n in devices for options in OPTIONS]
    if large:
        out += [(large, "shards", options) for options in LARGE]
    if by_source:
        out += [(n, p, options) for n, p in BY_SOURCE for options in LARGE]
    return out


def label(run: dict[str, Any]) -> str:
    """The row's method: the aggregation and every option that differs from the plain run."""
    words = [f"ridge round, then {run['aggregation']}" if run["start"] == "ridge" else run["aggregation"]]
    if run["aggregation"] == "damped":
        words[0] = f"exact, server step {run['step']:g}" if run["step"] > 1 else f"damped (step {run['step']:g})"
    if run["local_epochs"] != 5:
        words.append(f"{run['local_epochs']} local epochs")
    if run["logit_adjustment"]:
        words.append(f"logit adjustment {run['logit_adjustment']:g}")
    if run["learning_rate"] != 0.01:
        words.append(f"local lr {run['learning_rate']:g}")
    return ", ".join(words)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| N | partition | method | accuracy after round 0, 1, … (shifted test) | alone (mean) | centralized "
        "| wall, start-up incl. | median round | server peak RSS | device peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        curve = " ".join(f"{a:.3f}" for a in r["curve"])
        extra = (f"{r['alone']:.3f}", f"{r['centralized']:.3f}") if "alone" in r else ("", "")
        per_round = statistics.median(r["round_seconds"]) if r.get("round_seconds") else float("nan")
        lines.append(
            f"| {r['devices']} | {r['partition']} | {label(r)} | {curve} | {extra[0]} | {extra[1]} "
            f"| {r['seconds']:.0f} s | {per_round:.1f} s | {r['peak_rss_mb']:.0f} MB | {r.get('device_peak_rss_mb', 0):.0f} MB |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
