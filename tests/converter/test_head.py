"""head: seeded Kaiming-uniform A per tap (PEFT's LoRA A init)."""

from __future__ import annotations

import math

import numpy as np
from s2conv.head import init_head, init_lora_a
from s2rt.bundle.model import Loss, Tap, TrainDefaults

TAPS = (Tap("s2l.tap.0", "x", "fc0", (48,)), Tap("s2l.tap.1", "h", "fc1", (2, 8)))


def test_one_a_per_tap_shaped_rank_by_tap_size():
    head = init_head(TAPS, 7, rank=4, alpha=8, seed=0)
    assert [a.shape for a in head.a_init] == [(4, 48), (4, 16)]
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in head.a_init)
    assert (head.rank, head.alpha, head.num_outputs, head.scaling) == (4, 8.0, 7, 2.0)
    assert head.loss == Loss.SOFTMAX_CROSS_ENTROPY and head.defaults == TrainDefaults()
    assert head.num_parameters == 4 * (48 + 16) + 7 * 4 * 2


def test_values_lie_within_the_kaiming_uniform_bound():
    a = init_lora_a(8, 100, seed=3, tap_index=0)
    bound = 1 / math.sqrt(100)
    assert np.abs(a).max() <= bound
    assert np.abs(a).max() > 0.9 * bound  # spread over the whole interval
    assert abs(float(a.mean())) < 0.01


def test_seeded_deterministic_and_independent_per_tap():
    first = init_head(TAPS, 3, rank=2, alpha=4, seed=11)
    again = init_head(TAPS, 3, rank=2, alpha=4, seed=11)
    other = init_head(TAPS, 3, rank=2, alpha=4, seed=12)
    assert all(np.array_equal(a, b) for a, b in zip(first.a_init, again.a_init))
    assert not np.array_equal(first.a_init[0], other.a_init[0])
    one_tap = init_head(TAPS[:1], 3, rank=2, alpha=4, seed=11)
    assert np.array_equal(one_tap.a_init[0], first.a_init[0])  # adding a tap changes no earlier A
