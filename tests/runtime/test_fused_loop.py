"""The fused training loop (s2rt.fused, s2rt.trainer) against the loop it replaced
(helpers/reference_loop.py): the same adapters within 1e-5 and the same loss history for
every method, cache dtype and memory budget, and for heads without a fused form."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.reference_loop import reference_train
from helpers.tiny import tiny_bundle, tiny_weights
from s2rt.bundle import DType, parse_bundle, serialize_bundle
from s2rt.bundle.model import Loss, Optimizer
from s2rt.cache import CHECK_BYTES, SkipCache, records_offset
from s2rt.data import Samples
from s2rt.features import CachedFeatures
from s2rt.fused import DenseSteps, GenericSteps, Layout, LoRASteps, make_steps
from s2rt.head import AdapterHead
from s2rt.methods import get_method
from s2rt.optim import make_optimizer
from s2rt.session import MIB, Model, budgeted_capacity
from s2rt.trainer import TrainConfig, train

METHODS = ("skip2lora", "skiplora", "lora-last", "ft-last", "ft-bias")
N = 100  # not a multiple of the batch size: the last batch is short
CONFIG = TrainConfig(epochs=4, batch_size=16, learning_rate=0.05, seed=3)
TOL = {"rtol": 1e-5, "atol": 1e-5}


def bundle(cache_dtype: DType):
    return parse_bundle(serialize_bundle(tiny_bundle(tiny_weights(classes=4), rank=3, cache_dtype=cache_dtype))[0])


def samples() -> Samples:
    x = np.random.default_rng(7).normal(size=(N, 6)).astype(np.float32)
    return Samples(x, (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 2] > 0.3))


def assert_same_state(new: dict[str, np.ndarray], old: dict[str, np.ndarray]) -> None:
    assert new.keys() == old.keys()
    for k in new:
        np.testing.assert_allclose(new[k], old[k], err_msg=k, **TOL)


@pytest.mark.parametrize("budget_records", [None, 40], ids=["whole-epoch", "budget"])
@pytest.mark.parametrize("cache_dtype", [DType.FLOAT32, DType.FLOAT16, DType.INT8], ids=lambda d: d.name.lower())
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_like_the_reference_loop(method, cache_dtype, budget_records):
    b, data = bundle(cache_dtype), samples()
    mb = None
    if budget_records is not None:  # a budget that holds 40 records: decode in chunks, 60 samples miss every epoch
        mb = (records_offset(b.cache) + budget_records * (b.cache.record_size + CHECK_BYTES)) / MIB
    model = Model(b, method=method)
    initial = model.head.state_dict()
    result = model.fine_tune(data, CONFIG, max_cache_mb=mb)

    ref_head = get_method(method).make_head(b)
    cache = None
    if get_method(method).uses_cache:
        cache = SkipCache(b.cache, budgeted_capacity(b, N, mb))
    source = CachedFeatures(model.frozen, data.x, data.y, cache, max_bytes=None if mb is None else int(mb * MIB))
    history = reference_train(ref_head, source, data.y, CONFIG)

    assert_same_state(model.head.state_dict(), ref_head.state_dict())
    assert any(not np.allclose(v, initial[k]) for k, v in ref_head.state_dict().items()), "training did not move the adapters"
    np.testing.assert_allclose([e["train_loss"] for e in result.report.history], [e["train_loss"] for e in history], rtol=1e-5)
    if budget_records is not None and cache is not None:
        assert result.cache_records == 40 and source.prefetch_rows < N  # the budget did bound the decoded chunks


class Rows:
    """Rows of fixed arrays, one batch per call (no prefetch_rows), like a plain source."""

    def __init__(self, X: np.ndarray, F: np.ndarray) -> None:
        self.X, self.F = X, F

    def features(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.X[idx], self.F[idx]


class Unfused(AdapterHead):
    """An AdapterHead that does not describe itself: trains through GenericSteps, as a new head would."""

    fused_form = None  # type: ignore[assignment]


SIZES, RANK, CLASSES = (5, 8, 7), 2, 4


def adapter_head(cls: type[AdapterHead] = AdapterHead) -> AdapterHead:
    rng = np.random.default_rng(0)
    return cls(SIZES, RANK, 6.0, CLASSES, [rng.normal(size=(RANK, d)).astype(np.float32) for d in SIZES])


def problem(loss: Loss) -> tuple[Rows, np.ndarray]:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(90, sum(SIZES))).astype(np.float32)
    F = rng.normal(size=(90, CLASSES)).astype(np.float32)
    W = rng.normal(size=(sum(SIZES), CLASSES)).astype(np.float32)
    y = (X @ W).astype(np.float32) if loss == Loss.MSE else (X @ W).argmax(axis=1)
    return Rows(X, F), y


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(epochs=5, batch_size=8, learning_rate=0.02, loss=Loss.MSE, optimizer=Optimizer.SGD),
        TrainConfig(epochs=5, batch_size=8, learning_rate=0.02, loss=Loss.MSE),
        TrainConfig(epochs=5, batch_size=7, learning_rate=0.05, optimizer=Optimizer.SGD),
        TrainConfig(epochs=30, batch_size=8, learning_rate=0.05, val_fraction=0.3, patience=2, seed=4),
    ],
    ids=["mse-sgd", "mse-adam", "ce-sgd", "ce-adam-early-stop"],
)
@pytest.mark.parametrize("cls", [AdapterHead, Unfused], ids=["fused", "generic"])
def test_losses_optimizers_and_early_stopping_match_the_reference_loop(config, cls):
    source, y = problem(config.loss)
    new, old = adapter_head(cls), adapter_head()
    report = train(new, source, y, config)
    history = reference_train(old, source, y, config)
    assert_same_state(new.state_dict(), old.state_dict())
    assert len(report.history) == len(history)
    for mine, theirs in zip(report.history, history):
        np.testing.assert_allclose([mine[k] for k in theirs if k != "epoch"], [theirs[k] for k in theirs if k != "epoch"], rtol=1e-5)
    if config.patience:
        assert report.stopped_early and len(history) < config.epochs


@pytest.mark.parametrize(
    "make, kind",
    [
        (lambda b: get_method("skip2lora").make_head(b), LoRASteps),
        (lambda b: get_method("lora-last").make_head(b), LoRASteps),
        (lambda b: get_method("ft-last").make_head(b), DenseSteps),
        (lambda b: get_method("ft-bias").make_head(b), DenseSteps),
        (lambda b: Unfused((6, 5), 2, 4.0, 3, [np.ones((2, 6), np.float32), np.ones((2, 5), np.float32)]), GenericSteps),
    ],
    ids=["skip2lora", "lora-last", "ft-last", "ft-bias", "no-form"],
)
def test_each_head_gets_its_kernel(make, kind):
    head = make(tiny_bundle())
    optimizer = make_optimizer(Optimizer.ADAM, head.parameters(), 0.01)
    assert type(make_steps(head, Layout(10, 4, 3), Loss.SOFTMAX_CROSS_ENTROPY, optimizer)) is kind


def test_ft_last_keeps_its_state_file_layout():
    head = get_method("ft-last").make_head(tiny_bundle())
    rng = np.random.default_rng(2)
    state = {"dW": rng.normal(size=(3, 5)).astype(np.float32), "db": rng.normal(size=3).astype(np.float32)}
    head.load_state_dict(state)
    out = head.state_dict()
    assert set(out) == {"dW", "db"} and all(out[k].flags.c_contiguous for k in out)
    assert_same_state(out, state)
    theta = head.parameters()["theta"].reshape(3, 6)  # [dW | db], one row per class
    np.testing.assert_array_equal(theta[:, :5], state["dW"])
    np.testing.assert_array_equal(theta[:, 5], state["db"])


class Counting(Rows):
    def __init__(self, X: np.ndarray, F: np.ndarray) -> None:
        super().__init__(X, F)
        self.calls = 0

    def features(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        return super().features(idx)


def test_an_epoch_where_the_frozen_shift_underflows_runs_again_exactly():
    # F puts class 0 100 above the rest; the adapters start out pulling class 0 down by ~200,
    # so exp(z - max F) underflows for every class: the fused loss must notice and redo the epoch
    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, sum(SIZES))).astype(np.float32)
    X[:, 0] = 1.0
    F = np.zeros((40, CLASSES), np.float32)
    F[:, 0] = 100.0
    y = rng.integers(0, CLASSES, 40)
    new, old = adapter_head(), adapter_head()
    state = new.state_dict()
    state["A.0"][:] = 0.0
    state["A.0"][0, 0] = 1.0
    state["B.0"][:] = 0.0
    state["B.0"][0, 0] = -200.0 / 3.0  # scaling alpha / r = 3: class 0 loses 200
    for h in (new, old):
        h.load_state_dict(state)
    source = Counting(X, F)
    config = TrainConfig(epochs=2, batch_size=40, learning_rate=0.01)
    report = train(new, source, y, config)
    history = reference_train(old, Rows(X, F), y, config)
    assert source.calls == 3  # epoch 1 twice (fast, then exact), epoch 2 exact
    assert_same_state(new.state_dict(), old.state_dict())
    np.testing.assert_allclose([e["train_loss"] for e in report.history], [e["train_loss"] for e in history], rtol=1e-5)
    assert all(np.isfinite(e["train_loss"]) for e in report.history) and not report.diverged


def test_within_range_the_frozen_shift_changes_nothing():
    source, y = problem(Loss.SOFTMAX_CROSS_ENTROPY)
    counting = Counting(source.X, source.F)
    new, old = adapter_head(), adapter_head()
    config = TrainConfig(epochs=3, batch_size=90, learning_rate=0.05)
    train(new, counting, y, config)
    reference_train(old, source, y, config)
    assert counting.calls == 3  # no epoch ran twice
    assert_same_state(new.state_dict(), old.state_dict())
