"""lora_init: the seeded LoRA A draw, bit for bit against a pure-Python reference (also run on NumPy 1.23)."""

from __future__ import annotations

import hashlib
import math
import struct

import numpy as np
import pytest
from s2rt.lora_init import lora_a

M64 = 2**64 - 1
TOP_SEED = 2**63 - 1


def f32(x: float) -> float:
    """Round a double to the nearest float32 (C's cast, ties to even)."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def splitmix64_output(state: int) -> int:
    z = state & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def reference(rank: int, width: int, seed: int, tap: int) -> bytes:
    """The rule in lora_init's docstring in Python ints and doubles. A double holds every float32
    product exactly and rounds sqrt and division of float32 values correctly once cast back."""
    gamma = 0x9E3779B97F4A7C15
    key = splitmix64_output(seed + (tap + 1) * gamma)
    bound = f32(1.0 / f32(math.sqrt(f32(float(width)))))
    values = []
    for i in range(rank * width):
        u = (splitmix64_output(key + (i + 1) * gamma) >> 40) / 2**24
        values.append(f32((2.0 * u - 1.0) * bound))
    return struct.pack(f"<{len(values)}f", *values)


@pytest.mark.parametrize(
    ("rank", "width", "seed", "tap"),
    [(1, 1, 0, 0), (4, 48, 0, 0), (4, 96, 0, 2), (3, 1000, 12345, 7), (2, 5, TOP_SEED, 3), (8, 7, TOP_SEED, 0), (2, 33_000, 99, 1)],
)
def test_bit_for_bit_the_reference(rank, width, seed, tap):
    a = lora_a(rank, width, seed, tap)
    assert a.dtype == np.float32 and a.shape == (rank, width) and a.flags.c_contiguous
    assert a.astype("<f4").tobytes() == reference(rank, width, seed, tap)


def test_the_rule_is_frozen_because_bundles_name_it_instead_of_storing_a():
    # A 1.2 bundle with AInitRule.SPLITMIX64_UNIFORM holds no A: a runtime whose draw changed
    # would train from another A. These digests must never change; a new rule is a new enum value.
    digests = {
        (4, 48, 0, 0): "212a268279c5049e058de9c5bd94111d9e539acb73d4f03fe9a0f43bbf5e5667",
        (4, 96, 0, 2): "89ddf1240704fef4056bb08a787da235d73dbb9f36b61acd6c2aa715433a346d",
        (2, 5, TOP_SEED, 3): "a6c9ce1554db9e8b36b2078fd49953ad650b7d2159c32bc1daef61681c09e802",
    }
    got = {args: hashlib.sha256(lora_a(*args).astype("<f4").tobytes()).hexdigest() for args in digests}
    assert got == digests


def test_values_fill_the_kaiming_uniform_interval_evenly():
    width = 1000
    a = lora_a(64, width, 5, 0).astype(np.float64).ravel()
    bound = float(np.float32(1) / np.sqrt(np.float32(width)))
    assert np.abs(a).max() <= bound
    assert a.min() < -0.999 * bound and a.max() > 0.999 * bound
    assert abs(a.mean()) < 0.01 * bound  # 4 standard errors of the mean of 64,000 draws
    assert abs(a.std() / (bound / math.sqrt(3)) - 1) < 0.01
    counts, _ = np.histogram(a, bins=10, range=(-bound, bound))
    assert np.all(np.abs(counts / (a.size / 10) - 1) < 0.05)
    assert len(np.unique(a)) > 0.99 * a.size  # 24 random bits per value, not a short cycle


def test_taps_and_seeds_get_independent_streams():
    base = lora_a(8, 500, 1, 0)
    others = [lora_a(8, 500, 1, 1), lora_a(8, 500, 2, 0), lora_a(8, 500, 0, 1), lora_a(8, 500, TOP_SEED, 0)]
    for other in others:
        assert not np.array_equal(base, other)
        assert abs(np.corrcoef(base.ravel(), other.ravel())[0, 1]) < 0.05
    assert abs(np.corrcoef(base[0], base[1])[0, 1]) < 0.15  # rows are not shifted copies


def test_deterministic_and_a_smaller_rank_is_a_prefix_of_the_rows():
    np.testing.assert_array_equal(lora_a(6, 40, 9, 2), lora_a(6, 40, 9, 2))
    np.testing.assert_array_equal(lora_a(2, 40, 9, 2), lora_a(6, 40, 9, 2)[:2])


def test_accepts_numpy_integers_like_a_parsed_bundle_gives():
    np.testing.assert_array_equal(lora_a(np.int32(3), np.int64(10), np.int64(TOP_SEED), np.int64(1)), lora_a(3, 10, TOP_SEED, 1))


@pytest.mark.parametrize(
    ("args", "named"),
    [((0, 4, 0, 0), "rank"), ((2, 0, 0, 0), "width"), ((2, 4, -1, 0), "seed"), ((2, 4, 2**63, 0), "seed"), ((2, 4, 0, -1), "tap_index")],
)
def test_out_of_range_arguments_are_named(args, named):
    with pytest.raises(ValueError, match=named):
        lora_a(*args)
