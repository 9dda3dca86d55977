"""Edge profile of the device runtime: peak RSS while fine-tuning, and s2rt's cold start.

    .venv/bin/python bench/edge_profile.py [--model har] [--repeat 7] [--json FILE]

Every figure comes from a fresh `s2rt` process, as a device runs it: one thread for
OpenMP/OpenBLAS/MKL and `--threads 1` for onnxruntime.

- **Peak RSS**: `ru_maxrss` (from `wait4`) of `s2rt train BUNDLE --data FT --epochs 20`,
  for float and int8 bundles, ONNX segments on onnxruntime and TFLite ones on LiteRT,
  with float32 and int8 Skip-Caches.
- **Cold start**: wall time of `s2rt predict BUNDLE --data ONE.npz` (the float ONNX bundle) on one sample (the
  interpreter, every import, reading and verifying the bundle, the onnxruntime session,
  one prediction), and of `python -c "import s2rt.cli"` (imports alone). The median and
  the minimum over `--repeat` runs are reported; on a shared machine the minimum is the
  figure least disturbed by other work.
- For scale: the RSS of a bare `python -c "import numpy, onnxruntime"`.

The bundles are converted into a temporary folder first (s2conv, with the model's
pretraining inputs as calibration data for the int8 ones).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RSS_TARGET_MB = 80.0
COLD_START_TARGET_S = 0.5


@dataclass(frozen=True)
class Run:
    seconds: float  # wall time
    cpu_seconds: float  # user + system time: what a dedicated core would spend
    peak_rss_mb: float


# Linux counts the memory a process had before exec in its ru_maxrss, so a command started
# from this (large) process would report at least this process's size. A small launcher
# forks and execs the command instead, times it and reports its rusage.
LAUNCHER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(sys.argv[1], "w") as f:
    json.dump([os.waitstatus_to_exitcode(status), seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss], f)
"""


def run(command: list[str]) -> Run:
    """Run `command` to completion; its wall time and peak resident set size."""
    env = {**os.environ, **ONE_THREAD}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "run.json"
        out = subprocess.run([sys.executable, "-c", LAUNCHER, str(report), *command], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, check=False)
        if out.returncode or not report.exists():
            raise SystemExit(f"launcher failed: {out.stderr}")
        status, seconds, cpu_seconds, max_rss_kib = json.loads(report.read_text())
    if status:
        raise SystemExit(f"failed ({status}): {' '.join(command)}\n{out.stderr}")
    return Run(seconds, cpu_seconds, max_rss_kib / 1024)  # Linux reports KiB


def tool(name: str) -> list[str]:
    """The console script next to this interpreter, else `python -m <name>.cli`."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", f"{name}.cli"]


def convert(model: str, folder: Path) -> dict[str, tuple[Path, str]]:
    """label -> (bundle, the s2rt backend that runs it)."""
    sys.path[:0] = [str(ROOT / "models")]
    from s2models import data  # the pretraining inputs, for calibration (host side)

    calib = folder / "calib.npz"
    np.savez(calib, x=getattr(data, model).load().train.x)
    source = ROOT / "models" / f"{model}_mlp.onnx"
    int8 = ["--quantize", "int8", "--cache-dtype", "int8", "--calib", str(calib)]
    variants = {
        "onnx float, float32 cache": ([], "onnx"),
        "onnx float, int8 cache": (["--cache-dtype", "int8", "--calib", str(calib)], "onnx"),
        "onnx int8, int8 cache": (int8, "onnx"),
        "tflite float, float32 cache": (["--backend", "tflite"], "tflite"),
        "tflite int8, int8 cache": (["--backend", "tflite", *int8], "tflite"),
    }
    bundles = {}
    for i, (label, (options, backend)) in enumerate(variants.items()):
        path = folder / f"{model}_{i}.s2l"
        subprocess.run([*tool("s2conv"), str(source), "-o", str(path), *options], check=True, capture_output=True)
        bundles[label] = (path, backend)
    return bundles


def profile(model: str, repeat: int) -> dict[str, object]:
    data = ROOT / "models" / "data"
    with tempfile.TemporaryDirectory(prefix="s2l-edge-") as tmp:
        folder = Path(tmp)
        bundles = convert(model, folder)
        one = folder / "one.npz"
        np.savez(one, x=np.load(data / f"{model}_test.npz")["x"][:1])
        train = {
            label: run([*tool("s2rt"), "train", str(b), "--backend", backend, "--data", str(data / f"{model}_ft.npz"),
                        "--epochs", "20", "--threads", "1", "--quiet", "-o", str(folder / "adapters.npz")])
            for label, (b, backend) in bundles.items()
        }
        first = next(iter(bundles.values()))[0]
        predict = [run([*tool("s2rt"), "predict", str(first), "--data", str(one), "--threads", "1"]) for _ in range(repeat)]
        imports = [run([sys.executable, "-c", "import s2rt.cli"]) for _ in range(repeat)]
        baseline = run([sys.executable, "-c", "import numpy, onnxruntime"])
        sizes = {label: b.stat().st_size for label, (b, _) in bundles.items()}
    return {
        "model": model,
        "train_peak_rss_mb": {label: round(r.peak_rss_mb, 1) for label, r in train.items()},
        "train_seconds": {label: round(r.seconds, 3) for label, r in train.items()},
        "bundle_bytes": sizes,
        "cold_start_predict_s": _spread(predict),
        "cold_start_imports_s": _spread(imports),
        "baseline_numpy_onnxruntime_rss_mb": round(baseline.peak_rss_mb, 1),
        "repeat": repeat,
        "cpu_count": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def _spread(runs: list[Run]) -> dict[str, float]:
    seconds, cpu = [r.seconds for r in runs], [r.cpu_seconds for r in runs]
    return {
        "min": round(min(seconds), 3),
        "median": round(statistics.median(seconds), 3),
        "cpu_min": round(min(cpu), 3),
        "cpu_median": round(statistics.median(cpu), 3),
    }


def render(result: dict[str, object]) -> str:
    lines = [f"edge profile: {result['model']}, one thread, {result['repeat']} cold starts, load average {result['load_average']}"]
    rss = result["train_peak_rss_mb"]
    secs = result["train_seconds"]
    sizes = result["bundle_bytes"]
    assert isinstance(rss, dict) and isinstance(secs, dict) and isinstance(sizes, dict)
    for label in rss:
        ok = "ok" if rss[label] <= RSS_TARGET_MB else "OVER"
        lines.append(f"  s2rt train, {label:28s} peak RSS {rss[label]:6.1f} MB ({ok}, target {RSS_TARGET_MB:g})"
                     f"  {secs[label]:.2f} s  bundle {sizes[label]:,} bytes")
    for key, what in (("cold_start_predict_s", "s2rt predict, one sample"), ("cold_start_imports_s", "import s2rt.cli")):
        spread = result[key]
        assert isinstance(spread, dict)
        ok = "ok" if spread["min"] <= COLD_START_TARGET_S else "OVER"
        lines.append(
            f"  cold start, {what:26s} wall min {spread['min']:.3f} s ({ok}, target {COLD_START_TARGET_S}), "
            f"median {spread['median']:.3f} s; cpu min {spread['cpu_min']:.3f} s, median {spread['cpu_median']:.3f} s"
        )
    lines.append(f"  for scale: python -c 'import numpy, onnxruntime' peak RSS {result['baseline_numpy_onnxruntime_rss_mb']} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="har", choices=["har", "digits"], help="reference model to fine-tune (default: har)")
    parser.add_argument("--repeat", type=int, default=7, help="cold starts to time (default: 7)")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    result = profile(args.model, args.repeat)
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
