"""Load on a real `s2rt serve` (loopback only, bounded request counts): how fast it answers.

    .venv/bin/python bench/serve_load.py                      # the shipped HAR model
    .venv/bin/python bench/serve_load.py --requests 4000 --json out/serve_load.json

Measures, on one daemon (one backend thread, OMP_NUM_THREADS=1):
- time from process start to ready (first 200 from /v1/health/ready), median of 3 starts;
- predict requests/s and latency percentiles at 1 and 8 concurrent clients, one sample
  per request, JSON body and raw .npy body (each client is its own process, keep-alive),
  and batches of 64 samples from one client;
- ingest samples/s: one sample per request (one durable commit each) and 100 per request;
- RSS of the daemon idle (after warm-up) and while a fine-tune job runs (peak), and
  predict latency from one client while that job runs;
- the predict graph (one onnxruntime call, adapters bound as inputs) against the NumPy
  path before it (`S2RT_NO_PREDICT_GRAPH=1`): two daemons side by side, measured in
  alternation at 1 and 8 clients, .npy bodies.

Clients share the machine with the daemon, so on a 2-core box the 8-client figures
include the clients' own CPU use; ratios between rows are more telling than absolutes.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


def convert_har(out: Path) -> Path:
    sys.path[:0] = [str(ROOT / "runtime"), str(ROOT / "converter")]
    from s2conv import ConvertOptions, convert
    from s2rt.bundle import write_bundle

    labels = tuple((MODELS / "data" / "har_labels.txt").read_text().split())
    path = out / "har.s2l"
    write_bundle(convert(MODELS / "har_mlp.onnx", ConvertOptions(labels=labels)), path)
    return path


class Daemon:
    """One `s2rt serve` process on a free loopback port (control open: the benches start jobs over TCP)."""

    def __init__(self, bundle: Path, state: Path, log: Path, *flags: str, **extra_env: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime"), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **extra_env}
        self.log = log
        self.log_file = open(log, "wb")  # noqa: SIM115
        self.started = time.perf_counter()
        command = [sys.executable, "-m", "s2rt", "serve", str(bundle), "--state-dir", str(state), "--port", "0"]
        command.append("--allow-unauthenticated-control")  # the load runs jobs over loopback TCP without a token
        self.proc = subprocess.Popen([*command, *flags], env=env, stderr=self.log_file)
        self.port = self._port()
        self.url = f"http://127.0.0.1:{self.port}"
        while True:
            try:
                if httpx.get(f"{self.url}/v1/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.005)
        self.ready_seconds = time.perf_counter() - self.started

    def _port(self) -> int:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                event = json.loads(line)
                if event.get("event") == "ready":
                    self.startup_seconds = float(event["startup_seconds"])
                    return int(event["port"])
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited:\n{self.log.read_text()}")
            time.sleep(0.005)
        raise SystemExit("daemon not ready in 120 s")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(60)
        self.log_file.close()
        return code


def npy_bytes(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x, allow_pickle=False)
    return buffer.getvalue()


def _client(url: str, kind: str, payloads: list[Any], start_at: float) -> tuple[float, float, list[float]]:
    """One client process: waits for the common start, sends its requests back to back."""
    latencies = []
    with httpx.Client(base_url=url, timeout=60) as c:
        c.get("/v1/health/live")  # open the connection before the clock starts
        while time.time() < start_at:
            time.sleep(0.0005)
        began = time.perf_counter()
        for body in payloads:
            t = time.perf_counter()
            if kind == "json":
                r = c.post("/v1/predict", json={"x": body})
            elif kind == "npy":
                r = c.post("/v1/predict/npy", content=body)
            else:
                r = c.post("/v1/samples", json=body)
            latencies.append(time.perf_counter() - t)
            if r.status_code >= 300:
                raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
        return began, time.perf_counter(), latencies


def load(url: str, kind: str, clients: int, per_client: list[list[Any]]) -> dict[str, float]:
    start_at = time.time() + 1.0
    with mp.get_context("fork").Pool(clients) as pool:
        results = pool.starmap(_client, [(url, kind, per_client[k], start_at) for k in range(clients)])
    began = min(r[0] for r in results)
    ended = max(r[1] for r in results)
    latencies = np.array([lat for r in results for lat in r[2]])
    n = len(latencies)
    return {
        "clients": clients,
        "requests": n,
        "requests_per_s": n / (ended - began),
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p99_ms": float(np.percentile(latencies, 99) * 1e3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="predict requests per measurement (default 2000)")
    parser.add_argument("--ingest", type=int, default=500, help="single-sample ingest requests (default 500)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    with np.load(MODELS / "data" / "har_ft.npz") as d:
        x, y = d["x"].astype(np.float32), d["y"].astype(np.int64)
    out: dict[str, Any] = {"cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = convert_har(root)

        starts = []
        for i in range(3):
            d = Daemon(bundle, root / "state", root / f"start{i}.log")
            starts.append((d.ready_seconds, d.startup_seconds))
            if i < 2:
                d.stop()
        out["start_to_ready_s"] = statistics.median(s[0] for s in starts)
        out["startup_after_imports_s"] = statistics.median(s[1] for s in starts)

        rows = [x[i % len(x)] for i in range(args.requests)]
        warm = load(d.url, "json", 1, [[r.tolist() for r in rows[:200]]])
        del warm
        out["rss_idle_mb"] = d.rss_mb()
        out["predict"] = []
        for kind in ("json", "npy"):
            bodies = [r.tolist() for r in rows] if kind == "json" else [npy_bytes(r) for r in rows]
            for clients in (1, 8):
                share = [bodies[k::clients] for k in range(clients)]
                out["predict"].append({"body": kind, "batch": 1, **load(d.url, kind, clients, share)})
        batches64 = [x[(i * 64) % (len(x) - 64) :][:64] for i in range(max(1, args.requests // 16))]
        for kind, bodies in (("json", [b.tolist() for b in batches64]), ("npy", [npy_bytes(b) for b in batches64])):
            out["predict"].append({"body": kind, "batch": 64, **load(d.url, kind, 1, [bodies])})

        singles = [{"x": x[i % len(x)].tolist(), "y": int(y[i % len(x)])} for i in range(args.ingest)]
        r1 = load(d.url, "ingest", 1, [singles])
        r8 = load(d.url, "ingest", 8, [singles[k::8] for k in range(8)])
        batches = [{"x": x[i : i + 100].tolist(), "y": y[i : i + 100].tolist()} for i in range(0, len(x) - 99, 100)]
        rb = load(d.url, "ingest", 1, [batches])
        out["ingest"] = [
            {"samples_per_request": 1, "clients": 1, "samples_per_s": r1["requests_per_s"], "p99_ms": r1["p99_ms"]},
            {"samples_per_request": 1, "clients": 8, "samples_per_s": r8["requests_per_s"], "p99_ms": r8["p99_ms"]},
            {"samples_per_request": 100, "clients": 1, "samples_per_s": rb["requests_per_s"] * 100, "p99_ms": rb["p99_ms"]},
        ]

        c = httpx.Client(base_url=d.url, timeout=60)
        n = c.get("/v1/samples").json()["count"]
        job = c.post("/v1/jobs", json={"epochs": 10_000}).json()
        peak, stop = [d.rss_mb()], threading.Event()

        def sample_rss() -> None:
            while not stop.is_set():
                peak.append(d.rss_mb())
                time.sleep(0.02)

        sampler = threading.Thread(target=sample_rss)
        sampler.start()
        time.sleep(1.0)
        during = load(d.url, "json", 1, [[r.tolist() for r in rows[:500]]])
        status = c.get(f"/v1/jobs/{job['id']}").json()
        stop.set()
        sampler.join()
        c.post(f"/v1/jobs/{job['id']}/cancel")
        c.close()
        out["training"] = {
            "samples": n,
            "epochs_done_while_measured": status["progress"]["epoch"],
            "rss_peak_mb": max(peak),
            "predict_1_client_while_training": during,
        }
        out["exit_code"] = d.stop()
        out["predict_paths"] = compare_predict_paths(bundle, root, [npy_bytes(r) for r in rows])

    report(out)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))


def compare_predict_paths(bundle: Path, root: Path, bodies: list[bytes], rounds: int = 3) -> list[dict[str, Any]]:
    """Requests/s of the predict graph and of the NumPy path, two daemons measured in alternation."""
    daemons = {
        "graph": Daemon(bundle, root / "state-graph", root / "graph.log"),
        "numpy": Daemon(bundle, root / "state-numpy", root / "numpy.log", S2RT_NO_PREDICT_GRAPH="1"),
    }
    try:
        for d in daemons.values():
            load(d.url, "npy", 1, [bodies[:200]])  # warm-up
        rates: dict[tuple[str, int], list[float]] = {}
        for _ in range(rounds):
            for clients in (1, 8):
                share = [bodies[k::clients] for k in range(clients)]
                for name, d in daemons.items():
                    rates.setdefault((name, clients), []).append(load(d.url, "npy", clients, share)["requests_per_s"])
    finally:
        for d in daemons.values():
            d.stop()
    rows = []
    for clients in (1, 8):
        graph, numpy_path = statistics.median(rates["graph", clients]), statistics.median(rates["numpy", clients])
        rows.append({"clients": clients, "graph_requests_per_s": graph, "numpy_requests_per_s": numpy_path, "ratio": graph / numpy_path})
    return rows


def report(out: dict[str, Any]) -> None:
    t = out["training"]
    print(f"start to ready  {out['start_to_ready_s']:.2f} s (median of 3; {out['startup_after_imports_s']:.2f} s of it after imports)")
    print(f"RSS idle {out['rss_idle_mb']:.0f} MB; peak while training on {t['samples']} samples {t['rss_peak_mb']:.0f} MB")
    rows = [(f"predict {p['body']} batch {p['batch']} x{p['clients']}", p) for p in out["predict"]]
    rows.append(("predict json x1, training", t["predict_1_client_while_training"]))
    for name, p in rows:
        print(f"{name:28} {p['requests_per_s']:7.0f} req/s  p50 {p['p50_ms']:6.2f} ms  p99 {p['p99_ms']:6.2f} ms")
    for i in out["ingest"]:
        name = f"ingest {i['samples_per_request']}/request x{i['clients']}"
        print(f"{name:28} {i['samples_per_s']:7.0f} samples/s  p99 {i['p99_ms']:6.2f} ms")
    for p in out["predict_paths"]:
        print(
            f"predict npy x{p['clients']}: predict graph {p['graph_requests_per_s']:.0f} req/s, "
            f"NumPy path {p['numpy_requests_per_s']:.0f} req/s ({p['ratio']:.2f}x)"
        )


if __name__ == "__main__":
    main()
