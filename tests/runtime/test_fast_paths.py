"""The runtime's fast paths give the same answers as the plain ones (speed is measured in bench/).

- the trainer asking a source for many batches at once (`prefetch_rows`) trains exactly
  as one batch per call;
- `AdapterHead.merged_weight` folds the adapters into one matrix; `Model.logits` uses it
  and notices when the head's weights change behind its back;
- the vectorised `SkipCache.put` keeps the first record of a key seen twice in one call;
- `FrozenModel.check_input`'s finiteness check accepts huge finite values.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.tiny import tiny_bundle
from s2rt.cache import SkipCache, sample_keys
from s2rt.errors import RuntimeInputError
from s2rt.head import AdapterHead
from s2rt.session import Model
from s2rt.trainer import TrainConfig, train

SIZES, RANK, CLASSES = (5, 7, 3), 2, 4


def head(seed: int = 0) -> AdapterHead:
    rng = np.random.default_rng(seed)
    return AdapterHead(SIZES, RANK, 4.0, CLASSES, [rng.normal(size=(RANK, d)).astype(np.float32) for d in SIZES])


class Source:
    def __init__(self, X: np.ndarray, F: np.ndarray, prefetch_rows: int | None) -> None:
        self.X, self.F, self.calls = X, F, []
        if prefetch_rows is not None:
            self.prefetch_rows = prefetch_rows

    def features(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(len(idx))
        return self.X[idx], self.F[idx]


def test_prefetching_sources_train_exactly_like_one_batch_per_call():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(103, sum(SIZES))).astype(np.float32)
    F = rng.normal(size=(103, CLASSES)).astype(np.float32)
    y = rng.integers(0, CLASSES, 103)
    config = TrainConfig(epochs=3, batch_size=10, learning_rate=0.05)
    plain, chunked = head(), head()
    per_batch, prefetching = Source(X, F, None), Source(X, F, 45)
    a = train(plain, per_batch, y, config)
    b = train(chunked, prefetching, y, config)
    assert per_batch.calls == [10] * 10 + [3] + [10] * 10 + [3] + [10] * 10 + [3]
    assert prefetching.calls == [40, 40, 23] * 3  # whole batches, as many as fit in 45 rows
    np.testing.assert_array_equal(plain.parameters()["theta"], chunked.parameters()["theta"])
    assert [e["train_loss"] for e in a.history] == [e["train_loss"] for e in b.history]


def test_merged_weight_gives_delta_logits():
    h = head()
    h.parameters()["theta"][:] = np.random.default_rng(2).normal(size=h.num_parameters)
    X = np.random.default_rng(3).normal(size=(6, sum(SIZES))).astype(np.float32)
    np.testing.assert_allclose(X @ h.merged_weight(), h.delta_logits(X), rtol=1e-5, atol=1e-5)


def test_model_logits_follow_weights_changed_in_place():
    model = Model(tiny_bundle())
    x = np.random.default_rng(4).normal(size=(5, *model.bundle.input.shape)).astype(np.float32)
    taps, frozen = model.frozen.run(x)
    np.testing.assert_allclose(model.logits(x), frozen, atol=1e-6)  # B = 0: nothing changes
    theta = model.head.parameters()["theta"]
    theta[:] = np.random.default_rng(5).normal(size=theta.shape)  # behind the model's back
    np.testing.assert_allclose(model.logits(x), frozen + model.head.delta_logits(taps), rtol=1e-5, atol=1e-5)
    model.reset_adapters()
    np.testing.assert_allclose(model.logits(x), frozen, atol=1e-6)


def test_put_keeps_the_first_record_of_a_key_seen_twice_in_one_call():
    bundle = tiny_bundle()
    width = sum(t.size for t in bundle.taps)
    cache = SkipCache(bundle.cache, 4)
    x = np.random.default_rng(6).normal(size=(3, *bundle.input.shape)).astype(np.float32)
    keys = sample_keys(np.concatenate([x, x[:1]]))
    taps = np.arange(4 * width, dtype=np.float32).reshape(4, width)
    logits = np.zeros((4, bundle.head.num_outputs), np.float32)
    slots = cache.put(keys, taps, logits, np.array([0, 1, 0, 1]))
    assert slots.tolist() == [0, 1, 2, 0] and cache.count == 3
    X, _ = cache.gather(np.array([0, 1, 2]))
    np.testing.assert_array_equal(X, taps[:3])
    assert cache.lookup(keys).tolist() == [0, 1, 2, 0]


def test_check_input_accepts_huge_finite_values_and_names_the_bad_sample():
    model = Model(tiny_bundle())
    x = np.full((3, *model.bundle.input.shape), 3e38, np.float32)  # their float64 sum is finite, their float32 sum is not
    assert model.frozen.check_input(x) is not None
    x[1, 0] = np.nan
    with pytest.raises(RuntimeInputError, match="sample 1 contains NaN or Inf"):
        model.frozen.check_input(x)
