"""Inference latency: s2rt (frozen segment + adapter head) against plain onnxruntime on the original model.

Both sides return the same thing: `Model.logits` (tuned logits) against `InferenceSession.run`
(the original logits); `Model.classify` (classes and probabilities) is reported beside it.
Calls alternate in blocks so that both see the same machine noise.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from s2lbench.profiles import Profile
from s2lbench.timing import percentiles_us

BLOCK = 50


def ort_session(onnx_path: str, profile: Profile) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if profile.threads:
        options.intra_op_num_threads = profile.threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])


def _time_calls(fns: dict[str, Callable[[], Any]], calls: int) -> dict[str, list[float]]:
    clock = time.perf_counter
    out: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        for _ in range(BLOCK):
            fn()
    for _ in range(max(1, calls // BLOCK)):
        for name, fn in fns.items():
            times = out[name]
            for _ in range(BLOCK):
                t0 = clock()
                fn()
                times.append(clock() - t0)
    return out


def _numpy_path_model(bundle: Any, profile: Profile, theta: np.ndarray) -> Any:
    """The same model predicting the way s2rt did before the predict graph: frozen segment, then the head in NumPy."""
    import os

    from s2rt.backend.predict_graph import DISABLE_ENV
    from s2rt.session import Model

    before = os.environ.get(DISABLE_ENV)
    os.environ[DISABLE_ENV] = "1"
    try:
        model = Model(bundle, threads=profile.s2rt_threads)
    finally:
        if before is None:
            del os.environ[DISABLE_ENV]
        else:
            os.environ[DISABLE_ENV] = before
    model.head.parameters()["theta"][:] = theta
    return model


def predict_latency(bundle: Any, onnx_path: str, x: np.ndarray, profile: Profile, calls: int, batch_calls: int) -> dict[str, Any]:
    """p50/p99 (us) for one sample and a batch of 64, s2rt with trained-size adapters (random B, so nothing is skipped)."""
    from s2rt.session import Model

    model = Model(bundle, threads=profile.s2rt_threads)
    theta = model.head.parameters()["theta"]
    theta[:] = np.random.default_rng(0).normal(0.0, 0.01, theta.shape).astype(theta.dtype)
    numpy_path = _numpy_path_model(bundle, profile, theta)
    session = ort_session(onnx_path, profile)
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    result: dict[str, Any] = {}
    for label, n, count in (("one", 1, calls), ("batch64", 64, batch_calls)):
        xb = np.ascontiguousarray(np.resize(x, (n, *x.shape[1:])))
        feed = {input_name: xb}
        calls_by_name: dict[str, Callable[[], Any]] = {
            "s2rt_logits": functools.partial(model.logits, xb),
            "s2rt_predict": functools.partial(model.classify, xb),
            "s2rt_predict_numpy_path": functools.partial(numpy_path.classify, xb),
            "ort_original": functools.partial(session.run, [output_name], feed),
        }
        times = _time_calls(calls_by_name, count)
        stats: dict[str, Any] = {name: percentiles_us(t) for name, t in times.items()}
        stats["ratio_p50"] = stats["s2rt_logits"]["p50_us"] / stats["ort_original"]["p50_us"]
        stats["ratio_predict_p50"] = stats["s2rt_predict"]["p50_us"] / stats["ort_original"]["p50_us"]
        stats["ratio_predict_numpy_path_p50"] = stats["s2rt_predict_numpy_path"]["p50_us"] / stats["ort_original"]["p50_us"]
        result[label] = stats
    return result
