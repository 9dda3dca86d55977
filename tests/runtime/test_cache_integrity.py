"""A cache file is checked record by record when reopened: a torn or corrupted record and
everything after it are dropped (and recomputed on demand), never served."""

from __future__ import annotations

import numpy as np
from helpers.tiny import tiny_bundle
from s2rt.cache import HEADER_BYTES, SkipCache, sample_keys

DIGEST = "ab" * 32


def filled(path, n: int = 5):
    b = tiny_bundle()
    cache = SkipCache(b.cache, 8, path, DIGEST)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, cache.width)).astype(np.float32)
    f = rng.normal(size=(n, 3)).astype(np.float32)
    keys = sample_keys(x)
    cache.put(keys, x, f, rng.integers(0, 3, n))
    cache.close()
    return b, keys, x


def test_a_corrupt_record_drops_it_and_the_ones_after(tmp_path):
    path = tmp_path / "c.cache"
    b, keys, x = filled(path)
    with open(path, "r+b") as fh:  # flip one tap byte of record 3
        fh.seek(HEADER_BYTES + 3 * b.cache.record_size + b.cache.taps[0].offset)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    again = SkipCache(b.cache, 8, path, DIGEST)
    assert again.count == 3
    assert list(again.lookup(keys)) == [0, 1, 2, -1, -1]
    np.testing.assert_array_equal(again.gather(np.arange(3))[0], x[:3])


def test_a_record_counted_but_never_written_is_dropped(tmp_path):
    path = tmp_path / "c.cache"
    b, keys, _ = filled(path)
    with open(path, "r+b") as fh:  # a crash that persisted the count but not record 4
        fh.seek(HEADER_BYTES + 4 * b.cache.record_size)
        fh.write(bytes(b.cache.record_size))
    again = SkipCache(b.cache, 8, path, DIGEST)
    assert again.count == 4 and again.lookup(keys)[4] == -1


def test_intact_file_keeps_every_record(tmp_path):
    path = tmp_path / "c.cache"
    b, keys, _ = filled(path)
    assert list(SkipCache(b.cache, 8, path, DIGEST).lookup(keys)) == [0, 1, 2, 3, 4]
