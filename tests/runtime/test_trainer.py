"""The training loop on small synthetic problems served by an in-memory feature source."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import fields

import numpy as np
import pytest
from s2rt.bundle.model import Loss, Optimizer
from s2rt.errors import RuntimeInputError
from s2rt.head import AdapterHead
from s2rt.progress import ProgressReporter, format_epoch
from s2rt.trainer import TrainConfig, evaluate, predict_logits, split_indices, train

SIZES, RANK, CLASSES = (6, 10), 4, 3


class ArraySource:
    """Serves rows of fixed arrays (one batch per call); optionally, on call `poison_call`, the
    first sample asked for goes bad (its features inf) and stays bad, as it would in a cache."""

    def __init__(self, X: np.ndarray, F: np.ndarray, poison_call: int | None = None) -> None:
        self.X, self.F, self.poison_call, self.calls, self.bad = X, F, poison_call, 0, -1

    def features(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        if self.calls == self.poison_call:
            self.bad = idx[0]
        X = self.X[idx]
        X[idx == self.bad, 0] = np.inf
        return X, self.F[idx]


class Recorder:
    """A progress callback that is also an EpochListener and keeps the weights after each epoch."""

    def __init__(self, head: AdapterHead) -> None:
        self.head, self.batches, self.weights, self.closed = head, [], {0: head.parameters()["theta"].copy()}, False

    def __call__(self, epoch: int, epochs: int, batch: int, batches: int, loss: float) -> None:
        self.batches.append((epoch, epochs, batch, batches))

    def epoch_end(self, epoch: int, epochs: int, metrics: Mapping[str, float]) -> None:
        self.weights[epoch] = self.head.parameters()["theta"].copy()

    def close(self) -> None:
        self.closed = True


def new_head(seed: int = 0, classes: int = CLASSES) -> AdapterHead:
    rng = np.random.default_rng(seed)
    return AdapterHead(SIZES, RANK, 8.0, classes, [(rng.normal(size=(RANK, d)) / np.sqrt(d)).astype(np.float32) for d in SIZES])


def shifted_problem(n: int = 600, seed: int = 0) -> tuple[ArraySource, np.ndarray]:
    """Labels are linear in the taps; the frozen logits confidently predict the next class."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, sum(SIZES))).astype(np.float32)
    y = (X @ rng.normal(size=(sum(SIZES), CLASSES))).argmax(axis=1)
    F = (3.0 * np.eye(CLASSES)[(y + 1) % CLASSES]).astype(np.float32)
    return ArraySource(X, F), y


def noisy_problem() -> tuple[ArraySource, np.ndarray]:
    """90 samples, 30% random labels: validation loss falls (unevenly) for 7 epochs, then rises."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(90, sum(SIZES))).astype(np.float32)
    y = (X @ rng.normal(size=(sum(SIZES), CLASSES))).argmax(axis=1)
    flip = rng.random(90) < 0.3
    y[flip] = rng.integers(0, CLASSES, flip.sum())
    return ArraySource(X, np.zeros((90, CLASSES), np.float32)), y


def theta(head: AdapterHead) -> np.ndarray:
    return head.parameters()["theta"]


@pytest.mark.parametrize("optimizer,lr", [(Optimizer.ADAM, 0.03), (Optimizer.SGD, 0.5)])
def test_adapters_fix_wrong_frozen_logits(optimizer, lr):
    source, y = shifted_problem()
    head = new_head()
    before = evaluate(head, source, y, 64)
    report = train(head, source, y, TrainConfig(epochs=12, learning_rate=lr, optimizer=optimizer))
    after = evaluate(head, source, y, 64)
    assert before["accuracy"] < 0.05
    assert after["accuracy"] > 0.8
    assert after["loss"] < 0.5 * before["loss"]
    losses = [e["train_loss"] for e in report.history]
    assert losses[-1] < 0.7 * losses[0]
    assert report.epochs_run == 12 and not report.diverged and not report.stopped_early
    assert report.n_train == 600 and report.n_val == 0 and report.best_epoch is None
    phases = (report.time_features, report.time_decode, report.time_steps)
    assert all(t > 0 for t in phases) and sum(phases) <= report.time_total


def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not():
    source, y = shifted_problem(200)
    config = TrainConfig(epochs=3, val_fraction=0.2, seed=7)
    runs = [new_head() for _ in range(3)]
    reports = [
        train(runs[0], source, y, config),
        train(runs[1], source, y, config),
        train(runs[2], source, y, TrainConfig(epochs=3, val_fraction=0.2, seed=8)),
    ]
    assert np.array_equal(theta(runs[0]), theta(runs[1]))
    assert reports[0].history == reports[1].history
    assert not np.array_equal(theta(runs[0]), theta(runs[2]))


def test_early_stopping_triggers_and_restores_the_best_epoch():
    source, y = noisy_problem()
    head = new_head(1)
    recorder = Recorder(head)
    config = TrainConfig(epochs=60, learning_rate=0.02, batch_size=8, val_fraction=0.3, patience=3)
    report = train(head, source, y, config, progress=recorder)
    val = [e["val_loss"] for e in report.history]
    assert report.stopped_early and not report.diverged
    assert report.best_epoch == int(np.argmin(val)) + 1 > 1
    assert report.epochs_run == report.best_epoch + 3 < 60
    assert np.array_equal(theta(head), recorder.weights[report.best_epoch])
    assert not np.array_equal(theta(head), recorder.weights[report.epochs_run])
    assert "restored epoch" in report.message and recorder.closed


def test_without_patience_the_head_keeps_its_last_weights():
    source, y = noisy_problem()
    head = new_head(1)
    recorder = Recorder(head)
    report = train(head, source, y, TrainConfig(epochs=8, learning_rate=0.02, batch_size=8, val_fraction=0.3), progress=recorder)
    assert report.epochs_run == 8 and not report.stopped_early and report.best_epoch is not None
    assert np.array_equal(theta(head), recorder.weights[8])


def test_inf_features_roll_back_to_the_start_of_the_epoch():
    source, y = shifted_problem()
    batches = -(-600 // 32)
    source.poison_call = 2 * batches + 5  # epoch 3, batch 5: four steps of epoch 3 already taken
    head = new_head()
    recorder = Recorder(head)
    report = train(head, source, y, TrainConfig(epochs=6), progress=recorder)
    assert report.diverged and not report.stopped_early
    assert f"epoch 3, batch 5/{batches}" in report.message and "start of epoch 3" in report.message
    assert report.epochs_run == 2 and len(report.history) == 2
    assert np.array_equal(theta(head), recorder.weights[2])
    assert np.isfinite(theta(head)).all()


def test_inf_features_in_the_first_batch_roll_back_to_the_last_verified_epoch_start():
    # losses are checked once per epoch: epoch 3's first loss is inf, so its start was never
    # seen to give a finite loss, and the rollback goes to the start of epoch 2
    source, y = shifted_problem()
    batches = -(-600 // 32)
    source.poison_call = 2 * batches + 1
    head = new_head()
    recorder = Recorder(head)
    report = train(head, source, y, TrainConfig(epochs=6), progress=recorder)
    assert report.diverged
    assert f"epoch 3, batch 1/{batches}" in report.message and report.message.endswith("rolled back to the start of epoch 2")
    assert report.epochs_run == 1 and len(report.history) == 1
    assert np.array_equal(theta(head), recorder.weights[1])


@pytest.mark.parametrize(
    "lr,failure,good_epoch",
    [
        # epoch 1's step leaves finite weights whose logits overflow: the first bad loss is
        # epoch 2's first batch, so the start of epoch 2 was never verified; back to epoch 1
        (1e38, r"loss became (inf|nan) at epoch 2, batch 1/1 ", 1),
        # epoch 2's first loss is huge but finite (verifying its start); its step overflows
        (1e36, "adapter weights became non-finite during epoch 2 ", 2),
    ],
)
def test_a_huge_learning_rate_rolls_back_to_the_last_state_with_a_finite_loss(lr, failure, good_epoch):
    source, y = shifted_problem(64)
    head = new_head()
    recorder = Recorder(head)
    report = train(head, source, y, TrainConfig(epochs=5, batch_size=64, optimizer=Optimizer.SGD, learning_rate=lr), progress=recorder)
    assert report.diverged and re.match(failure, report.message)
    assert report.message.endswith(f"rolled back to the start of epoch {good_epoch}")
    assert report.epochs_run == len(report.history) == good_epoch - 1
    assert np.array_equal(theta(head), recorder.weights[good_epoch - 1])


def test_progress_gets_every_batch_and_each_epoch():
    source, y = shifted_problem(100)
    head = new_head()
    recorder = Recorder(head)
    train(head, source, y, TrainConfig(epochs=2, batch_size=32), progress=recorder)
    assert recorder.batches == [(e, 2, b, 4) for e in (1, 2) for b in (1, 2, 3, 4)]
    assert sorted(recorder.weights) == [0, 1, 2] and recorder.closed


def test_stratified_split_is_disjoint_complete_and_keeps_class_shares():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    train_idx, val_idx = split_indices(y, 0.2, np.random.default_rng(0), stratify=True)
    assert np.array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(100))
    assert np.bincount(y[val_idx]).tolist() == [10, 6, 4]
    other, _ = split_indices(y, 0.2, np.random.default_rng(1), stratify=True)
    assert not np.array_equal(train_idx, other)


def test_a_split_that_leaves_nothing_to_validate_is_an_error():
    with pytest.raises(RuntimeInputError, match="too few"):
        split_indices(np.array([0, 1, 2]), 0.1, np.random.default_rng(0), stratify=True)


def test_mse_regression_learns_and_reports_no_accuracy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, sum(SIZES))).astype(np.float32)
    target = (X @ rng.normal(scale=0.3, size=(sum(SIZES), 2))).astype(np.float32)
    source = ArraySource(X, np.zeros((300, 2), np.float32))
    head = new_head(classes=2)
    config = TrainConfig(epochs=15, learning_rate=0.01, loss=Loss.MSE, val_fraction=0.2)
    before = evaluate(head, source, target, 64, loss=Loss.MSE)
    report = train(head, source, target, config)
    after = evaluate(head, source, target, 64, loss=Loss.MSE)
    assert after["accuracy"] is None and "val_accuracy" not in report.history[-1]
    assert after["loss"] < 0.1 * before["loss"]


def test_predict_logits_is_frozen_plus_head_and_evaluate_agrees():
    source, y = shifted_problem(50)
    head = new_head()
    train(head, source, y, TrainConfig(epochs=2))
    z = predict_logits(head, source.X, source.F)
    np.testing.assert_allclose(z, head.forward(source.X, source.F), rtol=1e-6, atol=1e-6)
    result = evaluate(head, source, y, 16)
    assert result["n"] == 50 and result["accuracy"] == pytest.approx(np.mean(z.argmax(axis=1) == y))


@pytest.mark.parametrize(
    "X_cols,F_dtype",
    [(sum(SIZES) - 1, np.float32), (sum(SIZES), np.float64)],
    ids=["narrow-taps", "float64-logits"],
)
def test_a_source_serving_the_wrong_features_is_named(X_cols, F_dtype):
    source = ArraySource(np.zeros((10, X_cols), np.float32), np.zeros((10, CLASSES), F_dtype))
    with pytest.raises(RuntimeInputError, match="feature source returned"):
        train(new_head(), source, np.zeros(10, np.int64), TrainConfig(epochs=1))


@pytest.mark.parametrize(
    "y", [np.array([0, 1, 3]), np.array([0.0, 1.0, 2.0]), np.array([[0], [1], [2]])], ids=["out-of-range", "float", "2d"]
)
def test_bad_labels_are_rejected(y):
    source = ArraySource(np.zeros((3, sum(SIZES)), np.float32), np.zeros((3, CLASSES), np.float32))
    with pytest.raises(RuntimeInputError, match="labels"):
        train(new_head(), source, y, TrainConfig(epochs=1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": 0},
        {"batch_size": 0},
        {"batch_size": 2.5},
        {"learning_rate": 0.0},
        {"learning_rate": float("nan")},
        {"val_fraction": 1.0},
        {"patience": 2},
        {"patience": -1, "val_fraction": 0.2},
        {"optimizer": "RMSPROP"},
        {"shuffle": "yes"},
        {"seed": True},
    ],
)
def test_bad_config_is_rejected(kwargs):
    with pytest.raises(RuntimeInputError, match="TrainConfig"):
        TrainConfig(**kwargs)


def test_config_takes_enum_names_and_documents_every_field():
    config = TrainConfig(optimizer="SGD", loss=1)  # type: ignore[arg-type]
    assert config.optimizer is Optimizer.SGD and config.loss is Loss.MSE
    assert all(f.metadata.get("help") for f in fields(TrainConfig))


def test_reporter_logs_one_line_per_epoch_off_a_terminal():
    stream = io.StringIO()
    source, y = shifted_problem(100)
    train(new_head(), source, y, TrainConfig(epochs=3, val_fraction=0.2), progress=ProgressReporter(stream, tty=False))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in stream.getvalue()
    assert lines[2].startswith("epoch=3/3 loss=") and " val_loss=" in lines[2] and " val_acc=" in lines[2]


def test_reporter_draws_a_bar_in_place_on_a_terminal():
    stream = io.StringIO()
    reporter = ProgressReporter(stream, tty=True, width=4, interval=0.0)
    reporter(1, 2, 1, 2, 0.5)
    reporter(1, 2, 2, 2, 0.25)
    reporter.epoch_end(1, 2, {"train_loss": 0.25})
    reporter(2, 2, 1, 2, 0.125)
    reporter.close()
    out = stream.getvalue()
    assert out.startswith("\repoch 1/2 [##..] 1/2 loss=0.5\repoch 1/2 [####] 2/2 loss=0.25")
    assert "\repoch=1/2 loss=0.25" in out and out.endswith("loss=0.125\n") and out.count("\n") == 2


def test_format_epoch():
    assert (
        format_epoch(3, 20, {"epoch": 3, "train_loss": 0.41, "val_loss": 0.5, "val_accuracy": 0.93})
        == "epoch=3/20 loss=0.41 val_loss=0.5 val_acc=0.93"
    )
