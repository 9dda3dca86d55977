"""int8 Skip-Cache storage: per-tap scales, calibrated (fixed, clipping) or chosen on the device
(grown to fit, records requantized, kept in the cache file); fine-tuning stays within half a
point of the float32 cache on the shipped HAR and digits models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers.tiny import tiny_bundle, tiny_weights
from s2conv import ConvertOptions, convert
from s2models.data import digits, har
from s2rt.bundle import DType, parse_bundle, serialize_bundle
from s2rt.bundle.model import SCALE_ON_DEVICE, CacheLayout, plan_cache_layout
from s2rt.cache import SkipCache, sample_keys
from s2rt.data import Samples, load_samples
from s2rt.errors import BundleError
from s2rt.session import Model
from s2rt.trainer import TrainConfig

MODELS = Path(__file__).resolve().parents[2] / "models"
DIGEST = "ab" * 32
WORKLOADS = {"har": har, "digits": digits}


def int8_layout(scales: tuple[float, float] | None = None) -> CacheLayout:
    b = tiny_bundle()
    return plan_cache_layout(b.taps, 3, DType.INT8, tap_scales=scales)


def rows(n: int, width: int = 11, seed: int = 0, gain: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (gain * rng.normal(size=(n, width))).astype(np.float32)
    return sample_keys(x), x, rng.normal(size=(n, 3)).astype(np.float32), rng.integers(0, 3, n)


def test_int8_records_take_a_quarter_of_the_tap_bytes():
    f32, i8 = plan_cache_layout(tiny_bundle().taps, 3), int8_layout()
    assert sum(f.nbytes for f in i8.taps) * 4 == sum(f.nbytes for f in f32.taps)
    assert [f.scale for f in i8.taps] == [SCALE_ON_DEVICE] * 2


def test_calibrated_scales_round_to_half_a_step_and_clip_beyond():
    cache = SkipCache(int8_layout((0.01, 0.02)), capacity=50)
    keys, x, f, y = rows(50)
    cache.put(keys, x, f, y)
    gx, gf = cache.gather(cache.lookup(keys))
    assert gx.dtype == np.float32
    np.testing.assert_array_equal(gf, f)
    expected = np.concatenate([np.clip(x[:, :6], -1.27, 1.27), np.clip(x[:, 6:], -2.54, 2.54)], axis=1)
    np.testing.assert_allclose(gx, expected, atol=0.01 + 1e-6)
    assert np.abs(gx[:, :6]).max() == pytest.approx(1.27) and (np.abs(x[:, :6]) > 1.27).any()


def test_scales_chosen_on_the_device_fit_the_first_batch():
    cache = SkipCache(int8_layout(), capacity=40)
    keys, x, f, y = rows(20)
    cache.put(keys, x, f, y)
    assert cache.scales is not None
    np.testing.assert_allclose(cache.scales.values, [np.abs(x[:, :6]).max() / 127, np.abs(x[:, 6:]).max() / 127], rtol=1e-6)
    gx, _ = cache.gather(cache.lookup(keys))
    step = np.repeat(cache.scales.values, [6, 5])
    assert (np.abs(gx - x) <= step / 2 + 1e-6).all()


def test_a_larger_sample_grows_the_scale_and_requantizes_what_is_stored():
    cache = SkipCache(int8_layout(), capacity=40)
    k1, x1, f1, y1 = rows(20, seed=1)
    k2, x2, f2, y2 = rows(20, seed=2, gain=3.0)
    cache.put(k1, x1, f1, y1)
    before = cache.scales.values.copy()
    cache.put(k2, x2, f2, y2)
    after = cache.scales.values
    assert (after > before).all(), "nothing is clipped: the scale grows to the new maximum"
    gx, _ = cache.gather(cache.lookup(np.concatenate([k1, k2])))
    step = np.repeat(after, [6, 5])
    x = np.concatenate([x1, x2])
    assert (np.abs(gx - x) <= step + 1e-6).all(), "requantized records are off by at most one step"
    assert np.abs(gx - x).max() > 0


def test_device_scales_and_requantized_records_survive_reopening(tmp_path):
    path = tmp_path / "c.cache"
    cache = SkipCache(int8_layout(), 40, path, DIGEST)
    for seed, gain in ((1, 1.0), (2, 4.0)):
        keys, x, f, y = rows(10, seed=seed, gain=gain)
        cache.put(keys, x, f, y)
    all_keys = np.concatenate([rows(10, seed=1)[0], rows(10, seed=2, gain=4.0)[0]])
    scales = cache.scales.values.copy()
    stored, _ = cache.gather(cache.lookup(all_keys))
    cache.close()
    again = SkipCache(int8_layout(), 40, path, DIGEST)
    assert again.count == 20, "the requantized records still pass their checksums"
    np.testing.assert_array_equal(again.scales.values, scales)
    np.testing.assert_array_equal(again.gather(again.lookup(all_keys))[0], stored)


def test_a_file_written_with_other_calibrated_scales_is_rebuilt(tmp_path):
    path = tmp_path / "c.cache"
    cache = SkipCache(int8_layout((0.01, 0.02)), 8, path, DIGEST)
    keys, x, f, y = rows(5)
    cache.put(keys, x, f, y)
    cache.close()
    assert SkipCache(int8_layout((0.01, 0.02)), 8, path, DIGEST).count == 5
    assert SkipCache(int8_layout((0.01, 0.03)), 8, path, DIGEST).count == 0


def test_bad_scales_are_refused():
    with pytest.raises(ValueError, match="finite tap scales > 0"):
        int8_layout((0.01, -1.0))
    with pytest.raises(ValueError, match="int8 cache storage"):
        plan_cache_layout(tiny_bundle().taps, 3, DType.FLOAT16, tap_scales=(1.0, 1.0))
    layout = int8_layout((0.01, 0.02))
    bad = CacheLayout((*layout.fields[:-1], _with_scale(layout.fields[-1], float("nan"))), layout.record_size, layout.alignment)
    with pytest.raises(BundleError, match="scale nan"):
        SkipCache(bad, 4)
    mixed = CacheLayout((*layout.fields[:-1], _with_scale(layout.fields[-1], 0.0)), layout.record_size, layout.alignment)
    with pytest.raises(BundleError, match="mix calibrated scales"):
        SkipCache(mixed, 4)


def _with_scale(field, scale):
    return replace(field, scale=scale)


def test_scales_survive_the_bundle_format():
    b = tiny_bundle()
    bundle = parse_bundle(serialize_bundle(_with_layout(b, int8_layout((0.25, 0.5))))[0])
    assert [(f.dtype, f.scale) for f in bundle.cache.taps] == [(DType.INT8, 0.25), (DType.INT8, 0.5)]


def _with_layout(bundle, layout):
    return replace(bundle, cache=layout)


def test_int8_cache_trains_to_nearly_the_same_adapters():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    data = Samples(x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5))
    config = TrainConfig(epochs=6, batch_size=16, learning_rate=0.05, seed=1)
    m32 = Model(parse_bundle(serialize_bundle(tiny_bundle(tiny_weights()))[0]))
    m8 = Model(parse_bundle(serialize_bundle(tiny_bundle(tiny_weights(), cache_dtype=DType.INT8))[0]))
    m32.fine_tune(data, config)
    result = m8.fine_tune(data, config)
    assert result.cache_hits == 5 * 96
    np.testing.assert_allclose(m8.head.per_tap()[1][1], m32.head.per_tap()[1][1], atol=5e-2)


# -- the shipped models -----------------------------------------------------------------------


@pytest.fixture(scope="module", params=["har", "digits"])
def workload(request, tmp_path_factory):
    name = request.param
    calib = tmp_path_factory.mktemp(name) / "calib.npz"
    np.savez(calib, x=WORKLOADS[name].load().train.x)  # the pretraining inputs, as a host has them
    return name, calib


def test_int8_cache_fine_tunes_within_half_a_point_of_float32(workload):
    name, calib = workload
    source = MODELS / f"{name}_mlp.onnx"
    bundles = {
        "float32": convert(source),
        "int8 calibrated": convert(source, ConvertOptions(cache_dtype="int8", calib=str(calib))),
        "int8 on device": convert(source, ConvertOptions(cache_dtype="int8")),
    }
    accuracy = {}
    for label, bundle in bundles.items():
        model = Model(parse_bundle(serialize_bundle(bundle)[0]))
        ft, test = (load_samples(MODELS / "data" / f"{name}_{s}.npz", bundle.input) for s in ("ft", "test"))
        model.fine_tune(ft, TrainConfig(epochs=20, seed=0))
        accuracy[label] = model.evaluate(test)["accuracy"]
    for label in ("int8 calibrated", "int8 on device"):
        assert abs(accuracy[label] - accuracy["float32"]) <= 0.005, f"{name}: {accuracy}"
