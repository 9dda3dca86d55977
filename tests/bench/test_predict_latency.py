"""bench/predict_latency.py measures what it says: the folded predict graph and the Model
paths, each as a ratio to plain onnxruntime on the original model (no timing asserted)."""

from __future__ import annotations

import math

import predict_latency


def test_a_workload_gives_every_column_for_both_batch_sizes():
    result = predict_latency.measure("digits", calls=100, batch_calls=100)
    assert set(result) == {"one", "batch64"}
    for row in result.values():
        assert row["ort_us"] > 0
        for column in predict_latency.COLUMNS:
            assert math.isfinite(row[f"{column}_x"]) and row[f"{column}_x"] > 0
