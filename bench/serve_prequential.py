"""Prequential (test-then-train) accuracy through real daemons: `s2rt serve --online` against
periodic Skip2-LoRA jobs, on the same stream of labelled samples.

    .venv/bin/python bench/serve_prequential.py [--workloads har,digits,fan] [--every 128] [--json FILE]

The stream is a workload's fine-tune split in a seeded random order (as bench/prequential.py).
Two daemons on loopback, each with its own state directory, see the same requests; for every
sample in turn each daemon is asked POST /v1/predict, then given the label with POST
/v1/samples:

- online: `s2rt serve --online` (oselm, the defaults: warm-up 64, a fifth held out by content
  to judge snapshots, a snapshot every 256 learned samples): the answer to POST /v1/samples
  comes after the RLS step;
- jobs: `s2rt serve`, and after every `--every` samples POST /v1/jobs {"epochs": 20} (the
  bundle's optimizer and learning rate, the same held-out fifth, the accuracy gate), waited
  for before the stream goes on, so a job never lags the stream (a best case for jobs).

Reported per daemon: cumulative prequential accuracy at every `--every` samples seen, the
accuracy within each window of `--every` samples, over all and over the second half, and the
median time to answer POST /v1/samples (one sample a request). Writes bench/results/serve_prequential.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _sub in ("runtime", "converter", "bench"):
    sys.path.insert(0, str(ROOT / _sub))

from s2conv import ConvertOptions, convert  # noqa: E402
from s2lbench.workloads import load  # noqa: E402
from s2rt.bundle import write_bundle  # noqa: E402
from serve_load import Daemon as DaemonProcess  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "serve_prequential.json"


class Daemon(DaemonProcess):
    """A daemon the stream talks to: predict a sample, then send its label; jobs waited for."""

    def __init__(self, bundle: Path, state: Path, *flags: str) -> None:
        super().__init__(bundle, state, state.with_suffix(".log"), *flags)
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def predict(self, x: np.ndarray) -> int:
        r = self.client.post("/v1/predict", json={"x": x.tolist()})
        r.raise_for_status()
        return int(r.json()["classes"][0])

    def learn(self, x: np.ndarray, y: int) -> float:
        start = time.perf_counter()
        r = self.client.post("/v1/samples", json={"x": x.tolist(), "y": y})
        seconds = time.perf_counter() - start
        if r.status_code != 201:
            raise SystemExit(f"POST /v1/samples: {r.status_code} {r.text}")
        return seconds

    def job(self, epochs: int) -> dict[str, Any]:
        job = self.client.post("/v1/jobs", json={"epochs": epochs}).json()
        while job["state"] == "running":
            time.sleep(0.02)
            job = self.client.get(f"/v1/jobs/{job['id']}").json()
        return job

    def stop(self) -> int:
        self.client.close()
        return super().stop()


def run(name: str, every: int, epochs: int, seed: int, root: Path, online_flags: tuple[str, ...] = ()) -> dict[str, Any]:
    w = load(name)
    bundle = root / f"{name}.s2l"
    write_bundle(convert(w.onnx, ConvertOptions(seed=seed, tap_pool=2 if w.kind == "cnn" else 1)), bundle)
    order = np.random.default_rng(seed).permutation(len(w.ft))
    x, y = w.ft.x[order], w.ft.y[order].astype(int)
    daemons = {"online": Daemon(bundle, root / f"{name}-online", "--online", *online_flags), "jobs": Daemon(bundle, root / f"{name}-jobs")}
    correct = {k: np.zeros(len(y), bool) for k in daemons}
    ingest = {k: [] for k in daemons}
    jobs: list[dict[str, Any]] = []
    try:
        for i in range(len(y)):
            for k, d in daemons.items():
                correct[k][i] = d.predict(x[i]) == y[i]
                ingest[k].append(d.learn(x[i], int(y[i])))
            if (i + 1) % every == 0:
                job = daemons["jobs"].job(epochs)
                jobs.append({"after": i + 1, "state": job["state"], "val_accuracy": (job.get("result") or {}).get("val_accuracy")})
        versions = {k: len(d.client.get("/v1/adapters").json()["versions"]) - 1 for k, d in daemons.items()}
    finally:
        for d in daemons.values():
            d.stop()
    half = len(y) // 2
    checkpoints = list(range(every, len(y), every)) + [len(y)]
    starts = [0, *checkpoints[:-1]]
    return {
        "workload": name,
        "n": len(y),
        "every": every,
        "job_epochs": epochs,
        "online_flags": list(online_flags),
        "jobs": jobs,
        "methods": {
            k: {
                "accuracy": float(c.mean()),
                "accuracy_second_half": float(c[half:].mean()),
                "cumulative": [[n, float(c[:n].mean())] for n in checkpoints],
                "window": [[n, float(c[start:n].mean())] for start, n in zip(starts, checkpoints)],
                "ingest_ms_median": 1000 * statistics.median(ingest[k]),
                "versions": versions[k],
            }
            for k, c in correct.items()
        },
    }


def markdown(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        on, jobs = r["methods"]["online"], r["methods"]["jobs"]
        lines += [
            f"{r['workload']} ({r['n']} samples): online {on['accuracy']:.3f} / 2nd half {on['accuracy_second_half']:.3f} "
            f"(POST /v1/samples median {on['ingest_ms_median']:.1f} ms, {on['versions']} snapshot versions); "
            f"jobs every {r['every']} {jobs['accuracy']:.3f} / {jobs['accuracy_second_half']:.3f} "
            f"({jobs['ingest_ms_median']:.1f} ms, {jobs['versions']} versions from {len(r['jobs'])} jobs)",
            "",
            "| samples seen | online: cumulative | jobs: cumulative | online: this window | jobs: this window |",
            "|---:|---:|---:|---:|---:|",
        ]
        for (n, a), (_, b), (_, wa), (_, wb) in zip(on["cumulative"], jobs["cumulative"], on["window"], jobs["window"]):
            lines.append(f"| {n} | {a:.3f} | {b:.3f} | {wa:.3f} | {wb:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="har,digits,fan")
    p.add_argument("--every", type=int, default=128, help="samples between the jobs daemon's fine-tuning jobs")
    p.add_argument("--epochs", type=int, default=20, help="epochs per job")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--online-holdout", help="passed to the online daemon (default: its own, 0.2)")
    p.add_argument("--json", default=str(RESULTS), help=f"where to write the results (default {RESULTS.relative_to(ROOT)})")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="s2l-serve-preq-") as folder:
        flags = ("--online-holdout", args.online_holdout) if args.online_holdout is not None else ()
        results = [run(name, args.every, args.epochs, args.seed, Path(folder), flags) for name in args.workloads.split(",")]
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
