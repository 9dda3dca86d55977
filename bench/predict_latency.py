"""Predict latency side by side: s2rt against plain onnxruntime on the original model, per workload.

    OMP_NUM_THREADS=1 .venv/bin/python bench/predict_latency.py [--calls 3000] [--batch-calls 600] [workload ...]

One thread (the edge profile). Each row times, interleaved in blocks of BLOCK calls so that
all see the same machine noise, the original model in onnxruntime, the predict graph alone
(`PredictGraph.run` with the head's fold), `Model.logits` and `Model.classify`, with
trained-size Skip2-LoRA adapters (random B, so nothing is skipped). Medians, and each
column's ratio to the original. The README's latency lines come from this script.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent / "runtime", HERE.parent / "converter", HERE.parent / "models"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402
from s2lbench.latency import _time_calls, ort_session  # noqa: E402
from s2lbench.profiles import PROFILES  # noqa: E402
from s2lbench.workloads import available, load  # noqa: E402

COLUMNS = ("graph", "logits", "classify")


def measure(name: str, calls: int, batch_calls: int) -> dict[str, dict[str, float]]:
    from s2conv import ConvertOptions, convert
    from s2rt.backend.predict_graph import CLASSES, PROBABILITIES
    from s2rt.session import Model

    profile = PROFILES["edge"]
    workload = load(name)
    bundle = convert(workload.onnx, ConvertOptions(rank=4, alpha=8.0, seed=0, tap_pool=2 if workload.kind == "cnn" else 1))
    model = Model(bundle, threads=1)
    theta = model.head.parameters()["theta"]
    theta[:] = np.random.default_rng(0).normal(0.0, 0.01, theta.shape).astype(theta.dtype)
    model.classify(workload.test.x[:1])  # builds the predict graph
    graph = model._graph
    assert graph is not None, "the predict graph is off (S2RT_NO_PREDICT_GRAPH?)"
    session = ort_session(str(workload.onnx), profile)
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    out: dict[str, dict[str, float]] = {}
    for label, n, count in (("one", 1, calls), ("batch64", 64, batch_calls)):
        xb = np.ascontiguousarray(np.resize(workload.test.x, (n, *workload.test.x.shape[1:])), np.float32)
        folded = model._folded(model.head)
        fns = {
            "ort": functools.partial(session.run, [output_name], {input_name: xb}),
            "graph": functools.partial(graph.run, xb, *folded, (CLASSES, PROBABILITIES)),
            "logits": functools.partial(model.logits, xb),
            "classify": functools.partial(model.classify, xb),
        }
        times = _time_calls(fns, count)
        med = {k: float(np.median(v)) * 1e6 for k, v in times.items()}
        out[label] = {"ort_us": med["ort"], **{f"{c}_x": med[c] / med["ort"] for c in COLUMNS}}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=None)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--batch-calls", type=int, default=600)
    args = parser.parse_args()
    names = args.workloads or available()
    print(f"{'workload':<12} {'batch':<8} {'ort us':>8} " + " ".join(f"{c + ' x':>10}" for c in COLUMNS))
    for name in names:
        scale = 0.2 if load(name).kind == "cnn" else 1.0
        result = measure(name, max(100, int(args.calls * scale)), max(100, int(args.batch_calls * scale)))
        for label, row in result.items():
            print(f"{name:<12} {label:<8} {row['ort_us']:>8.1f} " + " ".join(f"{row[c + '_x']:>10.2f}" for c in COLUMNS), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
