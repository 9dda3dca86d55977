"""Model: fine-tuning with and without the Skip-Cache, cache files across runs, adapters on disk."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.tiny import tiny_bundle, tiny_weights
from s2rt.bundle import DType, parse_bundle, serialize_bundle
from s2rt.data import Samples
from s2rt.session import Model
from s2rt.trainer import TrainConfig


def model(cache_dtype=DType.FLOAT32):
    return Model(parse_bundle(serialize_bundle(tiny_bundle(tiny_weights(), cache_dtype=cache_dtype))[0]))


def samples(n=96, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return Samples(x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5))


CONFIG = TrainConfig(epochs=6, batch_size=16, learning_rate=0.05, seed=1)


def test_cache_changes_nothing_but_the_work_done():
    data = samples()
    cached, uncached = model(), model()
    with_cache = cached.fine_tune(data, CONFIG)
    without = uncached.fine_tune(data, CONFIG, use_cache=False)
    for (a0, b0), (a1, b1) in zip(cached.head.per_tap(), uncached.head.per_tap()):
        np.testing.assert_array_equal(a0, a1)
        np.testing.assert_array_equal(b0, b1)
    assert (with_cache.cache_misses, with_cache.cache_hits) == (96, 5 * 96)
    assert (without.cache_misses, without.cache_hits) == (6 * 96, 0)


def test_training_improves_accuracy_on_the_tiny_task():
    data, m = samples(), model()
    before = m.evaluate(data)["accuracy"]
    m.fine_tune(data, TrainConfig(epochs=30, batch_size=16, learning_rate=0.05))
    assert m.evaluate(data)["accuracy"] > before + 0.2


def test_cache_file_is_reused_by_the_next_run(tmp_path):
    data = samples()
    first = model().fine_tune(data, CONFIG, cache_path=tmp_path / "c.cache")
    second = model().fine_tune(data, CONFIG, cache_path=tmp_path / "c.cache")
    assert first.cache_misses == 96
    assert second.cache_misses == 0 and second.cache_hits == 6 * 96


def test_capacity_bound_keeps_training_correct():
    data = samples()
    full, bounded = model(), model()
    full.fine_tune(data, CONFIG)
    result = bounded.fine_tune(data, CONFIG, cache_capacity=40)
    assert result.cache_misses == 40 + 6 * 56
    np.testing.assert_array_equal(full.head.per_tap()[1][1], bounded.head.per_tap()[1][1])


def test_float16_cache_trains_to_nearly_the_same_adapters():
    data = samples()
    m32, m16 = model(), model(DType.FLOAT16)
    m32.fine_tune(data, CONFIG)
    m16.fine_tune(data, CONFIG)
    np.testing.assert_allclose(m16.head.per_tap()[0][1], m32.head.per_tap()[0][1], atol=2e-2)


def test_saved_adapters_give_the_same_predictions(tmp_path):
    data, m = samples(), model()
    m.fine_tune(data, CONFIG)
    m.save_adapters(tmp_path / "a.npz")
    again = model()
    assert not np.array_equal(again.logits(data.x), m.logits(data.x))
    again.load_adapters(tmp_path / "a.npz")
    np.testing.assert_array_equal(again.logits(data.x), m.logits(data.x))
    classes, probs = again.classify(data.x)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)
    assert (classes == probs.argmax(axis=1)).all()


def test_unlabelled_samples_cannot_train():
    with pytest.raises(ValueError, match="labelled"):
        model().fine_tune(Samples(samples().x, None), CONFIG)
