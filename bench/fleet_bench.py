"""The fleet table: HAR's fine-tune samples over N simulated devices, through Flower's Simulation Engine.

    make fleet-bench                      # N = 10 and 100, then N = 1000 with exact averaging
    .venv-fleet/bin/python bench/fleet_bench.py --devices 10 --json out/fleet.json

Per N and partition: the global adapters' accuracy on the shifted test split after each
round for FedAvg of A and B, exact averaging of dW = B A, the damped exact step, and
beside them each device alone and all samples in one place (same epochs in all). The
bundle has rank 8 >= 7 classes, so exact averaging is exact (s2fleet.aggregate).
Wall time per simulation (Ray's start-up included) and the server process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
AGGREGATIONS = (("fedavg", 1.0), ("exact", 1.0), ("damped", 0.5))


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
    parser.add_argument("--large", type=int, default=1000, help="one more fleet size with exact averaging only (0: none)")
    parser.add_argument("--partitions", nargs="*", default=["shards", "iid"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp))
        data = load_data(DATA / "har_ft.npz", DATA / "har_test.npz", Model.open(bundle))
        rows: list[dict[str, Any]] = []
        plan = [(n, p, agg, step) for n in args.devices for p in args.partitions for agg, step in AGGREGATIONS]
        if args.large:
            plan.append((args.large, "shards", "exact", 1.0))
        for n, part, agg, step in plan:
            run = FleetRun(bundle, n, part, agg, args.rounds, args.local_epochs, step=step)
            print(f"N={n} {part} {agg} ...", file=sys.stderr, flush=True)
            result = one(run, data)
            row = {**asdict(run), **result, "peak_rss_mb": peak_rss_mb()}
            row.pop("bundle")
            if agg == "exact":
                row["alone"] = alone(run, data)
                row["centralized"] = centralized(run, data)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("refused",)}), file=sys.stderr, flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"commit": commit, "rows": rows}, indent=2))
    print(table(rows))
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| N | partition | aggregation | round 0 → last (shifted test) | alone (mean) | centralized "
        "| wall, start-up incl. | server peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        curve = " → ".join(f"{a:.3f}" for a in r["curve"][:: max(1, len(r["curve"]) - 1)])
        extra = (f"{r['alone']:.3f}", f"{r['centralized']:.3f}") if "alone" in r else ("", "")
        agg = r["aggregation"] + (f" (step {r['step']})" if r["aggregation"] == "damped" else "")
        lines.append(
            f"| {r['devices']} | {r['partition']} | {agg} | {curve} | {extra[0]} | {extra[1]} "
            f"| {r['seconds']:.0f} s | {r['peak_rss_mb']:.0f} MB |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
