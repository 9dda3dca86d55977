from __future__ import annotations

import numpy as np
import pytest
from helpers.tiny import tiny_bundle
from s2rt.bundle import DType
from s2rt.cache import SkipCache, sample_keys


def fill(cache: SkipCache, n: int, width: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, width)).astype(np.float32)
    f = rng.normal(size=(n, classes)).astype(np.float32)
    y = rng.integers(0, classes, size=n)
    keys = sample_keys(x)
    return keys, x, f, y, cache.put(keys, x, f, y)


def test_put_then_gather_float32_is_exact():
    b = tiny_bundle()
    cache = SkipCache(b.cache, capacity=10)
    keys, x, f, y, slots = fill(cache, 7, cache.width, 3)
    assert list(slots) == list(range(7)) and cache.count == 7
    gx, gf = cache.gather(cache.lookup(keys))
    np.testing.assert_array_equal(gx, x)
    np.testing.assert_array_equal(gf, f)
    np.testing.assert_array_equal(cache.labels[:7], y)


def test_float16_storage_halves_taps_and_rounds():
    b32, b16 = tiny_bundle(), tiny_bundle(cache_dtype=DType.FLOAT16)
    assert b16.cache.record_size < b32.cache.record_size
    cache = SkipCache(b16.cache, capacity=4)
    keys, x, _, _, _ = fill(cache, 4, cache.width, 3)
    gx, _ = cache.gather(cache.lookup(keys))
    assert gx.dtype == np.float32
    np.testing.assert_allclose(gx, x, rtol=1e-3, atol=1e-3)
    assert not np.array_equal(gx, x)


def test_full_cache_admits_no_more_and_keeps_what_it_has():
    cache = SkipCache(tiny_bundle().cache, capacity=3)
    keys, *_ , slots = fill(cache, 5, cache.width, 3)
    assert list(slots) == [0, 1, 2, -1, -1]
    assert list(cache.lookup(keys)) == [0, 1, 2, -1, -1]


def test_duplicate_samples_share_a_record():
    cache = SkipCache(tiny_bundle().cache, capacity=4)
    x = np.ones((2, cache.width), np.float32)
    slots = cache.put(sample_keys(x), x, np.zeros((2, 3), np.float32), np.zeros(2, np.int64))
    assert list(slots) == [0, 0] and cache.count == 1


def test_file_cache_survives_reopen(tmp_path):
    b = tiny_bundle()
    path = tmp_path / "c.cache"
    cache = SkipCache(b.cache, 8, path, "ab" * 32)
    keys, x, f, _, _ = fill(cache, 5, cache.width, 3)
    cache.close()
    again = SkipCache(b.cache, 8, path, "ab" * 32)
    assert again.count == 5
    gx, gf = again.gather(again.lookup(keys))
    np.testing.assert_array_equal(gx, x)
    np.testing.assert_array_equal(gf, f)


@pytest.mark.parametrize("change", ["digest", "capacity", "garbage"])
def test_file_of_another_bundle_or_corrupt_header_is_rebuilt(tmp_path, change):
    b = tiny_bundle()
    path = tmp_path / "c.cache"
    cache = SkipCache(b.cache, 8, path, "ab" * 32)
    keys, *_ = fill(cache, 5, cache.width, 3)
    cache.close()
    digest, capacity = "ab" * 32, 8
    if change == "digest":
        digest = "cd" * 32
    elif change == "capacity":
        capacity = 9
    else:
        with open(path, "r+b") as fh:
            fh.write(b"garbage!")
    again = SkipCache(b.cache, capacity, path, digest)
    assert again.count == 0
    assert (again.lookup(keys) == -1).all()


def test_keys_are_content_hashes():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    k = sample_keys(x)
    assert k.shape == (3, 16)
    np.testing.assert_array_equal(sample_keys(x[::-1].copy())[::-1], k)
    assert len({row.tobytes() for row in k}) == 3
