"""Server-side aggregation: weights by example count, the exact average of B A, SVD re-factoring."""

from __future__ import annotations

import numpy as np
import pytest
from s2fleet.aggregate import Aggregation, Update, aggregate, delta, fedavg, refactor, truncation_error

TAPS, CLASSES = (5, 9), 3


def update(seed: int, rank: int, examples: int) -> Update:
    rng = np.random.default_rng(seed)
    adapters = [(rng.normal(size=(rank, d)).astype(np.float32), rng.normal(size=(CLASSES, rank)).astype(np.float32)) for d in TAPS]
    return Update(adapters, examples)


def test_fedavg_is_the_example_weighted_mean_of_each_factor():
    ups = [update(0, 2, 10), update(1, 2, 30)]
    got = fedavg(ups)
    for t in range(len(TAPS)):
        np.testing.assert_allclose(got[t][0], 0.25 * ups[0].adapters[t][0] + 0.75 * ups[1].adapters[t][0], rtol=1e-6)
        np.testing.assert_allclose(got[t][1], 0.25 * ups[0].adapters[t][1] + 0.75 * ups[1].adapters[t][1], rtol=1e-6)


def test_exact_is_the_weighted_average_of_the_products_when_rank_reaches_the_classes():
    rank = CLASSES  # rank(dW) <= C: nothing is cut
    ups = [update(k, rank, n) for k, n in enumerate((5, 15, 80))]
    got = aggregate(Aggregation.EXACT, ups, rank)
    w = np.array([5, 15, 80]) / 100
    for t, dw in enumerate(delta(got)):
        expected = sum(wk * u.adapters[t][1].astype(np.float64) @ u.adapters[t][0] for wk, u in zip(w, ups))
        np.testing.assert_allclose(dw, expected, rtol=1e-5, atol=1e-5)
    assert truncation_error(ups, got) < 1e-6


def test_below_the_class_count_the_svd_keeps_the_best_part_and_says_how_much_is_lost():
    ups = [update(k, 3, 1) for k in range(4)]
    got = aggregate(Aggregation.EXACT, ups, rank=1)
    assert [a.shape for a, _ in got] == [(1, d) for d in TAPS]
    assert 0.05 < truncation_error(ups, got) < 1.0
    # fedavg's product of means is further from the true average than the rank-3 exact result
    assert truncation_error(ups, fedavg(ups)) > truncation_error(ups, aggregate(Aggregation.EXACT, ups, rank=3))


def test_refactor_balances_the_factors():
    dw = np.random.default_rng(3).normal(size=(4, 11))
    a, b = refactor(dw, 4)
    np.testing.assert_allclose(b @ a, dw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=0), rtol=1e-5)


def test_a_damped_step_moves_part_of_the_way_from_the_current_version():
    rank = CLASSES
    current = update(7, rank, 1).adapters
    ups = [update(8, rank, 1)]
    half = delta(aggregate(Aggregation.DAMPED, ups, rank, current, step=0.5))
    for t in range(len(TAPS)):
        np.testing.assert_allclose(half[t], 0.5 * delta(current)[t] + 0.5 * delta(ups[0].adapters)[t], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("counts", [(0, 0), (-1, 5)])
def test_updates_without_examples_are_refused(counts):
    with pytest.raises(ValueError, match="positive example counts"):
        fedavg([update(0, 2, n) for n in counts])


def test_a_step_out_of_range_is_refused():
    with pytest.raises(ValueError, match="server step size"):
        aggregate(Aggregation.DAMPED, [update(0, 3, 1)], 3, update(1, 3, 1).adapters, step=0.0)


@pytest.mark.parametrize("name", ["iid", "shards"])
@pytest.mark.parametrize("devices", [1, 7, 600, 1000])
def test_every_sample_goes_to_one_device_and_every_device_has_one(name, devices):
    from s2fleet.partition import partition

    y = np.random.default_rng(0).integers(0, 7, size=1173)
    parts = partition(name, y, devices, seed=3)
    assert len(parts) == devices and min(len(p) for p in parts) >= 1
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))


def test_shards_give_most_devices_few_classes():
    from s2fleet.partition import partition

    y = np.repeat(np.arange(7), 100)
    classes = [len(np.unique(y[p])) for p in partition("shards", y, 50, seed=0)]
    assert np.median(classes) <= 2
