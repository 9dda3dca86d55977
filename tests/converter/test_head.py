"""head: seeded Kaiming-uniform A per tap (PEFT's LoRA A init), drawn by the runtime's generator."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from s2conv import convert
from s2conv.head import init_head
from s2rt.bundle import AInitRule, parse_bundle, serialize_bundle
from s2rt.bundle.fb.BundleFile import BundleFile
from s2rt.bundle.model import Loss, Tap, TrainDefaults
from s2rt.lora_init import lora_a

TAPS = (Tap("s2l.tap.0", "x", "fc0", (48,)), Tap("s2l.tap.1", "h", "fc1", (2, 8)))
HAR = Path(__file__).resolve().parents[2] / "models" / "har_mlp.onnx"


def test_one_a_per_tap_shaped_rank_by_tap_size():
    head = init_head(TAPS, 7, rank=4, alpha=8, seed=0)
    assert [a.shape for a in head.a_init] == [(4, 48), (4, 16)]
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in head.a_init)
    assert (head.rank, head.alpha, head.num_outputs, head.scaling) == (4, 8.0, 7, 2.0)
    assert head.loss == Loss.SOFTMAX_CROSS_ENTROPY and head.defaults == TrainDefaults()
    assert head.num_parameters == 4 * (48 + 16) + 7 * 4 * 2


def test_values_lie_within_the_kaiming_uniform_bound():
    a = init_head((Tap("t", "x", "fc", (100,)),), 3, rank=8, alpha=8, seed=3).a_init[0]
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


def test_a_is_the_runtimes_generator_so_a_bundle_can_leave_it_out():
    head = init_head(TAPS, 3, rank=4, alpha=8, seed=2**63 - 1)
    for index, (a, tap) in enumerate(zip(head.a_init, TAPS)):
        assert a.tobytes() == lora_a(4, tap.size, 2**63 - 1, index).tobytes()


def test_a_seed_the_bundle_cannot_hold_is_refused():
    with pytest.raises(ValueError, match="seed"):
        init_head(TAPS, 3, rank=2, alpha=4, seed=-1)


def test_a_converted_bundle_names_the_rule_and_reads_back_the_same_a():
    bundle = convert(HAR)
    data, _ = serialize_bundle(bundle)
    head = BundleFile.GetRootAs(data, 0).BodyNestedRoot().Head()
    assert (head.AInitRule(), head.AInitLength()) == (AInitRule.SPLITMIX64_UNIFORM, 0)
    read = parse_bundle(data)
    for got, want in zip(read.head.a_init, bundle.head.a_init, strict=True):
        assert got.tobytes() == want.tobytes()


def test_the_har_bundle_shrinks_by_the_a_bytes():
    bundle = convert(HAR)
    first = bundle.head.a_init[0].copy()
    first[0, 0] = np.nextafter(first[0, 0], np.float32(1))  # no longer the seed's A: stored as before 1.2
    stored = dataclasses.replace(bundle, head=dataclasses.replace(bundle.head, a_init=(first, *bundle.head.a_init[1:])))
    a_bytes = bundle.head.rank * sum(t.size for t in bundle.taps) * 4
    assert a_bytes == 3840
    saved = len(serialize_bundle(stored)[0]) - len(serialize_bundle(bundle)[0])
    assert a_bytes <= saved <= a_bytes + 96 * len(bundle.taps)
