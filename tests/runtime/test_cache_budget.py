"""The cache's memory budget (`max_cache_mb`, `s2rt train --max-cache-mb`): the cache keeps
the first samples it sees that fit, the rest run the frozen forward every epoch, and the
adapters come out the same as with an unbounded cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.tiny import tiny_bundle, tiny_weights
from s2rt.bundle import DType, parse_bundle, serialize_bundle, write_bundle
from s2rt.cache import CHECK_BYTES, SkipCache, records_offset, records_within
from s2rt.data import Samples
from s2rt.errors import RuntimeInputError
from s2rt.session import MIB, Model, budgeted_capacity
from s2rt.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIG = TrainConfig(epochs=6, batch_size=16, learning_rate=0.05, seed=1)


def model(cache_dtype: DType = DType.FLOAT32) -> Model:
    return Model(parse_bundle(serialize_bundle(tiny_bundle(tiny_weights(), cache_dtype=cache_dtype))[0]))


def samples(n: int = 96) -> Samples:
    x = np.random.default_rng(3).normal(size=(n, 6)).astype(np.float32)
    return Samples(x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5))


def budget_mb(layout, records: int) -> float:
    """The smallest budget, in MiB, that holds exactly `records` records."""
    return (records_offset(layout) + records * (layout.record_size + CHECK_BYTES)) / MIB


@pytest.mark.parametrize("dtype", [DType.FLOAT32, DType.FLOAT16, DType.INT8])
def test_records_within_counts_header_scales_and_checksums(dtype):
    layout = tiny_bundle(cache_dtype=dtype).cache
    exact = int(budget_mb(layout, 10) * MIB)
    assert records_within(layout, exact) == 10
    assert records_within(layout, exact - 1) == 9
    assert records_within(layout, records_offset(layout)) == 0
    assert SkipCache(layout, 10).nbytes == exact


def test_a_budgeted_cache_gives_the_same_adapters_as_an_unbounded_one():
    data = samples()
    full, bounded = model(), model()
    full.fine_tune(data, CONFIG)
    result = bounded.fine_tune(data, CONFIG, max_cache_mb=budget_mb(bounded.bundle.cache, 40))
    assert result.cache_records == 40
    assert result.cache_misses == 40 + 6 * 56 and result.cache_hits == 5 * 40
    for (a0, b0), (a1, b1) in zip(full.head.per_tap(), bounded.head.per_tap()):
        np.testing.assert_array_equal(a0, a1)
        np.testing.assert_array_equal(b0, b1)


def test_the_cache_file_stays_within_the_budget(tmp_path):
    m = model()
    mb = budget_mb(m.bundle.cache, 40) + 100 / MIB  # not a whole number of records
    m.fine_tune(samples(), CONFIG, cache_path=tmp_path / "c.cache", max_cache_mb=mb)
    assert (tmp_path / "c.cache").stat().st_size <= mb * MIB


def test_int8_storage_fits_more_samples_in_the_same_budget():
    mb = budget_mb(tiny_bundle().cache, 10)
    counts = {dtype: budgeted_capacity(tiny_bundle(cache_dtype=dtype), 10_000, mb) for dtype in (DType.FLOAT32, DType.INT8)}
    assert counts[DType.FLOAT32] == 10 and counts[DType.INT8] > 10


def test_a_budget_above_the_need_caches_every_sample():
    result = model().fine_tune(samples(), CONFIG, max_cache_mb=64)
    assert result.cache_records == 96 and result.cache_misses == 96


def test_the_least_of_capacity_and_budget_wins():
    m = model()
    assert budgeted_capacity(m.bundle, 30, budget_mb(m.bundle.cache, 40)) == 30
    assert budgeted_capacity(m.bundle, 50, budget_mb(m.bundle.cache, 40)) == 40


@pytest.mark.parametrize("mb, message", [(1e-6, "holds no cache record"), (0, "expected a number of MiB > 0"), (float("nan"), "> 0")])
def test_a_useless_budget_is_refused(mb, message):
    with pytest.raises(RuntimeInputError, match=message):
        model().fine_tune(samples(), CONFIG, max_cache_mb=mb)


def test_s2rt_train_max_cache_mb(tmp_path):
    bundle = tmp_path / "tiny.s2l"
    write_bundle(tiny_bundle(tiny_weights()), bundle)
    data = samples()
    np.savez(tmp_path / "ft.npz", x=data.x, y=data.y)
    mb = budget_mb(tiny_bundle().cache, 40)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}
    args = ["train", bundle, "--data", tmp_path / "ft.npz", "-o", tmp_path / "a.npz", "--epochs", 3, "--max-cache-mb", repr(mb), "--json"]
    out = subprocess.run([sys.executable, "-m", "s2rt.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["cache_records"] == 40 and report["cache_misses"] == 40 + 3 * 56
