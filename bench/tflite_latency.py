"""Frozen-segment latency on onnxruntime vs LiteRT, one thread, and bundle sizes per backend.

    .venv/bin/python bench/tflite_latency.py [--repeat 300] [--models har,digits] [--onnx MORE.onnx ...] [--json FILE]

For every reference model in models/models.json: convert with `backend=both`, open the
ONNX segment on onnxruntime and the TFLite segment on LiteRT (the runtime's backends, one
thread each; LiteRT with its default XNNPACK delegate, and for comparison its builtin
kernels without delegates), and time `backend.run(x)` on the model's own test inputs at
batch sizes 1, 32 and 256. The backends take turns in blocks of 10 calls so that all see
the same machine load; the median over `--repeat` calls is the figure. A last column times
LiteRT when every call changes the batch size, alternating b and b + 1 (the input is resized and the tensors re-planned).

Bundle sizes are the serialised .s2l bytes with the ONNX segment only, the TFLite segment
only, and both. The last column is the largest difference between the two segments'
outputs on 256 test inputs, relative to each output's largest magnitude.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _sub in ("runtime", "converter"):
    sys.path.insert(0, str(ROOT / _sub))

from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402
from s2conv import ConvertOptions, convert  # noqa: E402
from s2rt.backend import open_backend  # noqa: E402
from s2rt.bundle import Bundle, SegmentBackend, serialize_bundle  # noqa: E402
from s2rt.data import load_samples  # noqa: E402

BATCHES = (1, 32, 256)


class NoDelegateLiteRT:
    """The TFLite segment on LiteRT's builtin kernels (XNNPACK off), resized like the backend."""

    def __init__(self, model: bytes) -> None:
        self.interpreter = Interpreter(
            model_content=model, num_threads=1, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = [d["index"] for d in self.interpreter.get_output_details()]
        self.batch = 0

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        if len(x) != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], list(x.shape), strict=True)
            self.interpreter.allocate_tensors()
            self.batch = len(x)
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(i) for i in self.outputs]


def median_us(runners: dict[str, Callable[[], object]], repeat: int, block: int = 10) -> dict[str, float]:
    """Median wall time per call in microseconds. The runners take turns in blocks of
    `block` calls, so all of them see the same machine load while each block runs with
    its own data in the caches, as a device running one model does."""
    for run in runners.values():
        run()  # warm up: first allocation, XNNPACK weight packing
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(max(repeat // block, 1)):
        for name, run in runners.items():
            for _ in range(block):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e6 for name, t in times.items()}


def bundle_sizes(bundle: Bundle) -> dict[str, int]:
    sizes = {}
    for label, kinds in {"onnx": (SegmentBackend.ONNX,), "tflite": (SegmentBackend.TFLITE,), "both": tuple(SegmentBackend)}.items():
        subset = dataclasses.replace(bundle, segments=tuple(s for s in bundle.segments if s.backend in kinds))
        sizes[label] = len(serialize_bundle(subset)[0])
    return sizes


def measure(name: str, source: Path, data: Path | None, repeat: int) -> dict:
    """`data`: the samples to time on (None: uniform [0, 1) inputs of the model's input shape)."""
    bundle = convert(source, ConvertOptions(backend="both"))
    if data is not None:
        x_all = load_samples(data, bundle.input).x
    else:
        x_all = np.random.default_rng(0).uniform(0, 1, size=(256, *bundle.input.shape)).astype(np.float32)
    onnx, litert = open_backend(bundle, "onnx", 1), open_backend(bundle, "tflite", 1)
    plain = NoDelegateLiteRT(bytes(bundle.segment(SegmentBackend.TFLITE).model))
    rows = []
    for batch in BATCHES:
        x = np.ascontiguousarray(np.resize(x_all, (batch, *x_all.shape[1:])))
        flip = [x, np.ascontiguousarray(np.resize(x_all, (batch + 1, *x_all.shape[1:])))]
        state = {"i": 0}

        def resizing(flip: list[np.ndarray] = flip, state: dict = state) -> object:
            state["i"] ^= 1
            return litert.run(flip[state["i"]])

        runners = {
            "onnxruntime": lambda x=x: onnx.run(x),
            "litert": lambda x=x: litert.run(x),
            "litert_builtin": lambda x=x: plain.run(x),
            "litert_resize_each_call": resizing,
        }
        rows.append({"batch": batch, **median_us(runners, repeat if batch < 256 else max(repeat // 5, 20))})
    x = np.ascontiguousarray(x_all[:256])
    want, got = onnx.run(x), litert.run(x)
    parity = max(float(np.abs(got[k] - want[k]).max() / max(np.abs(want[k]).max(), 1e-30)) for k in want)
    return {
        "model": name,
        "max_relative_difference": parity,
        "segment_bytes": {s.backend.name.lower(): len(s.model) for s in bundle.segments},
        "bundle_bytes": bundle_sizes(bundle),
        "latency_us": rows,
    }


def render(results: list[dict]) -> str:
    lines = [
        "| model | batch | onnxruntime µs | LiteRT (XNNPACK) µs | LiteRT / ORT | LiteRT builtin µs | LiteRT, resize every call µs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["latency_us"]:
            lines.append(
                f"| {r['model']} | {row['batch']} | {row['onnxruntime']:.1f} | {row['litert']:.1f} | "
                f"{row['litert'] / row['onnxruntime']:.2f} | {row['litert_builtin']:.1f} | {row['litert_resize_each_call']:.1f} |"
            )
    lines += [
        "",
        "| model | ONNX segment | TFLite segment | bundle, ONNX only | bundle, TFLite only | bundle, both | TFLite vs ONNX, rel. |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s, b = r["segment_bytes"], r["bundle_bytes"]
        lines.append(
            f"| {r['model']} | {s['onnx']:,} | {s['tflite']:,} | {b['onnx']:,} | {b['tflite']:,} | {b['both']:,} | "
            f"{r['max_relative_difference']:.1e} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=300, help="timed calls per backend and batch size (default: 300)")
    parser.add_argument("--models", help="comma-separated subset of models.json (default: all)")
    parser.add_argument("--onnx", type=Path, nargs="*", default=[], help="also time these ONNX models (on uniform [0, 1) inputs)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    reference = json.loads((ROOT / "models" / "models.json").read_text())
    names = args.models.split(",") if args.models else sorted(reference)
    results = []
    for name in names:
        entry = reference[name]
        source = ROOT / "models" / entry["onnx"]
        results.append(measure(name, source, ROOT / "models" / entry["data"]["test"], args.repeat))
    results += [measure(path.stem, path, None, args.repeat) for path in args.onnx]
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
