"""The fine-tuning loop: epochs of mini-batches over a feature source, early stop, rollback.

The trainer never sees where features come from: a `FeatureSource` serves the fused
tap rows X and frozen logits F for sample indices (from the Skip-Cache on a hit, from
the frozen segment on a miss). Only the head's adapters are trained.

The batch steps themselves live in `s2rt.fused`: the trainer hands them one chunk of an
epoch at a time (a source with `features_into` writes cached rows straight into their
buffers) and reads the batch losses once per epoch, for the history and the divergence
guard.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from s2rt.bundle.model import Loss, Optimizer
from s2rt.errors import RuntimeInputError
from s2rt.fused import Layout, make_steps
from s2rt.head import FLOAT
from s2rt.loss import LOSSES
from s2rt.methods import TrainableHead
from s2rt.optim import StepOptimizer, make_optimizer
from s2rt.progress import EpochListener, ProgressCallback


class FeatureSource(Protocol):
    """Serves features by sample index. A source may also have an int attribute
    `prefetch_rows`: how many rows it serves well in one call; the trainer then asks for
    that many (whole batches) at a time instead of one batch per call."""

    def features(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(X: len(idx) x D float32, F: len(idx) x C float32) for sample indices `idx`."""
        ...


LR_SCHEDULES = ("constant", "cosine")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=20, metadata=_help("passes over the training split"))
    batch_size: int = field(default=32, metadata=_help("samples per gradient step"))
    learning_rate: float = field(default=0.01, metadata=_help("optimizer step size"))
    optimizer: Optimizer = field(default=Optimizer.ADAM, metadata=_help("SGD or ADAM"))
    loss: Loss = field(
        default=Loss.SOFTMAX_CROSS_ENTROPY,
        metadata=_help("SOFTMAX_CROSS_ENTROPY (integer labels) or MSE (float targets)"),
    )
    seed: int = field(default=0, metadata=_help("seeds the validation split and the shuffling"))
    shuffle: bool = field(default=True, metadata=_help("reshuffle the training split each epoch"))
    val_fraction: float = field(default=0.0, metadata=_help("fraction held out for validation (0: no validation)"))
    patience: int = field(
        default=0,
        metadata=_help(
            "stop after this many epochs without a lower validation loss and restore the best weights (0: off; needs val_fraction > 0)"
        ),
    )
    lr_schedule: str = field(
        default="constant",
        metadata=_help("constant, or cosine: the learning rate decays per epoch as 0.5 (1 + cos(pi (epoch - 1) / epochs))"),
    )
    logit_adjustment: float = field(
        default=0.0,
        metadata=_help(
            "tau >= 0: train on z + tau log(prior), the prior being the training split's class frequencies, so a class the "
            "samples lack is left out of the softmax (0: off; classification only). Counters label skew: a fleet device "
            "that holds a few classes stops pushing the others down. Prediction and validation use z"
        ),
    )

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("batch_size", 1), ("seed", 0), ("patience", 0)):
            value = getattr(self, name)
            _require(name, value, _is_int(value) and value >= low, f"an integer >= {low}")
        lr, vf = self.learning_rate, self.val_fraction
        _require("learning_rate", lr, _is_real(lr) and 0 < lr < math.inf, "a finite number > 0")
        _require("val_fraction", vf, _is_real(vf) and 0 <= vf < 1, "a number in [0, 1)")
        _require("shuffle", self.shuffle, isinstance(self.shuffle, bool), "True or False")
        _require("lr_schedule", self.lr_schedule, self.lr_schedule in LR_SCHEDULES, " or ".join(LR_SCHEDULES))
        tau = self.logit_adjustment
        _require("logit_adjustment", tau, _is_real(tau) and 0 <= tau < math.inf, "a finite number >= 0")
        object.__setattr__(self, "optimizer", _enum(Optimizer, "optimizer", self.optimizer))
        object.__setattr__(self, "loss", _enum(Loss, "loss", self.loss))
        if self.logit_adjustment and self.loss != Loss.SOFTMAX_CROSS_ENTROPY:
            raise RuntimeInputError(
                f"TrainConfig.logit_adjustment={self.logit_adjustment} needs loss SOFTMAX_CROSS_ENTROPY, got {self.loss.name}"
            )
        if self.patience and not self.val_fraction:
            raise RuntimeInputError(
                f"TrainConfig.patience={self.patience} needs a validation split: set val_fraction > 0 (e.g. 0.2) or patience=0"
            )


@dataclass
class TrainReport:
    """What `train` did. The three phase times cover training batches only:
    `time_features` the feature source (cache gather, frozen forward on a miss),
    `time_decode` laying each chunk out for the steps (per-tap buffers, loss constants),
    `time_steps` the batch steps themselves (forward, loss, backward, update; one rollback
    snapshot per epoch). Validation and callbacks are in `time_total` alone."""

    epochs_run: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    diverged: bool = False
    message: str = ""
    n_train: int = 0
    n_val: int = 0
    time_features: float = 0.0
    time_decode: float = 0.0
    time_steps: float = 0.0
    time_total: float = 0.0


class _Diverged(Exception):
    pass


def train(
    head: TrainableHead,
    source: FeatureSource,
    y: np.ndarray,
    config: TrainConfig,
    *,
    progress: ProgressCallback | None = None,
) -> TrainReport:
    """Fine-tune `head` in place on samples 0..len(y)-1 of `source` with targets `y`.

    `progress` is called after every batch; if it is an `EpochListener` it also gets
    each finished epoch's history entry and a `close()` at the end. Early stopping
    (patience > 0) leaves the head at the epoch with the lowest validation loss. A
    non-finite loss or weight rolls head and optimizer back to the start of the
    failing epoch (or of the epoch before, when the failing epoch's very first batch
    already had a non-finite loss) and stops with `diverged=True`.
    """
    start = time.perf_counter()
    targets = prepare_targets(y, head.num_outputs, config.loss)
    rng = np.random.default_rng(config.seed)
    train_idx, val_idx = split_indices(targets, config.val_fraction, rng, stratify=config.loss == Loss.SOFTMAX_CROSS_ENTROPY)
    listener = progress if isinstance(progress, EpochListener) else None
    fit = getattr(head, "fit", None)
    if fit is not None:  # a closed-form head (oselm): one pass over the features instead of epochs
        if config.logit_adjustment:
            raise RuntimeInputError(f"logit_adjustment={config.logit_adjustment} trains by steps; a closed-form head takes 0")
        return _fit(fit, source, targets, train_idx, val_idx, config, listener, start)
    prepare = getattr(head, "prepare", None)
    if prepare is not None:  # statistics a head needs before its first step (skip2relu's standardization)
        prepare(source, train_idx)
    run = _Run(head, source, targets, config, progress, len(train_idx))
    run.offset = class_offsets(targets[train_idx], config.logit_adjustment, head.num_outputs)
    report = TrainReport(n_train=len(train_idx), n_val=len(val_idx))
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # the divergence guard handles inf/NaN
            _epochs(run, rng, train_idx, val_idx, report, listener)
    finally:
        if listener is not None:
            listener.close()
    report.time_total = time.perf_counter() - start
    return report


def _fit(
    fit: Any,
    source: FeatureSource,
    targets: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    listener: EpochListener | None,
    start: float,
) -> TrainReport:
    try:
        report: TrainReport = fit(source, targets, train_idx, val_idx, config)
        if listener is not None:
            listener.epoch_end(1, 1, report.history[-1])
    finally:
        if listener is not None:
            listener.close()
    report.time_total = time.perf_counter() - start
    return report


def _epochs(
    run: _Run,
    rng: np.random.Generator,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    report: TrainReport,
    listener: EpochListener | None,
) -> None:
    config, params = run.config, run.head.parameters()
    best_loss, best_params, waited = math.inf, None, 0
    for epoch in range(1, config.epochs + 1):
        if config.lr_schedule == "cosine":
            run.optimizer.lr = config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / config.epochs))
        order = rng.permutation(train_idx) if config.shuffle else train_idx
        try:
            entry = run.epoch(epoch, order, report) | _validate(run, val_idx)
            _check_finite(params, entry, epoch)
        except _Diverged as exc:
            _roll_back(run, report, str(exc))
            if best_params is not None:
                report.message += f", then to the best-validation epoch {report.best_epoch}"
            break
        report.history.append(entry)
        report.epochs_run = epoch
        if listener is not None:
            listener.epoch_end(epoch, config.epochs, entry)
        if not len(val_idx):
            continue
        if entry["val_loss"] < best_loss:
            best_loss, report.best_epoch, waited = entry["val_loss"], epoch, 0
            if config.patience:
                best_params = _copy(params)
        else:
            waited += 1
            if config.patience and waited >= config.patience:
                report.stopped_early = True
                report.message = f"validation loss did not improve for {waited} epochs; restored epoch {report.best_epoch}"
                break
    if best_params is not None:
        _copy_into(params, best_params)


def _roll_back(run: _Run, report: TrainReport, why: str) -> None:
    """Restore the last epoch-start state known to give a finite loss; the report keeps
    only the epochs that state has seen."""
    _copy_into(run.head.parameters(), run.good[0])
    run.optimizer.restore(run.good[1])
    del report.history[run.good_epoch - 1 :]
    report.epochs_run = run.good_epoch - 1
    report.diverged = True
    report.message = f"{why}; rolled back to the start of epoch {run.good_epoch}"


class _Run:
    """One training run's fixed parts (head, optimizer, batch steps, data) and its last good state.

    Losses are checked once per epoch, after its last batch. The state at an epoch's
    start becomes the good state once that epoch's first batch is seen to have had a
    finite loss, so a rollback never lands on weights that were never checked: when the
    very first batch of an epoch is already non-finite, the rollback goes to the start
    of the last epoch whose first batch was finite.
    """

    def __init__(
        self,
        head: TrainableHead,
        source: FeatureSource,
        targets: np.ndarray,
        config: TrainConfig,
        progress: ProgressCallback | None,
        n_train: int,
    ) -> None:
        self.head, self.source, self.targets, self.config = head, source, targets, config
        self.progress = progress
        self.optimizer: StepOptimizer = make_optimizer(config.optimizer, head.parameters(), config.learning_rate)
        bs = config.batch_size
        prefetch = getattr(source, "prefetch_rows", 0)
        per_chunk = -(-n_train // bs) if prefetch >= n_train else max(1, prefetch // bs)  # whole batches per features() call
        self.layout = Layout(n_train, bs, per_chunk)
        self.batch_sizes = np.array([self.layout.size(b) for b in range(self.layout.batches)], np.float64)
        self.steps = make_steps(head, self.layout, config.loss, self.optimizer)
        self.optimizer.plan(config.epochs * self.layout.batches)
        self.offset: np.ndarray | None = None  # added to F in training steps (logit adjustment)
        self.good_epoch = 1
        self.good = self._snapshot()

    def _snapshot(self) -> tuple[dict[str, np.ndarray], tuple[int, list[np.ndarray]]]:
        return _copy(self.head.parameters()), self.optimizer.snapshot()

    def epoch(self, epoch: int, order: np.ndarray, report: TrainReport) -> dict[str, float]:
        at_start = self._snapshot()
        self._pass(epoch, order, report)
        if self.steps.unsure():  # the fast loss may have lost precision: this epoch again, exactly
            _copy_into(self.head.parameters(), at_start[0])
            self.optimizer.restore(at_start[1])
            self.steps.make_exact()
            self._pass(epoch, order, report)
        losses, batches = self.steps.batch_losses(), self.layout.batches
        bad = np.flatnonzero(~np.isfinite(losses))
        if not len(bad) or bad[0] > 0:  # the first batch's loss was finite: the start of this epoch is good
            self.good, self.good_epoch = at_start, epoch
        if len(bad):
            b = int(bad[0])
            raise _Diverged(f"loss became {float(losses[b])} at epoch {epoch}, batch {b + 1}/{batches}{_DIVERGED_HINT}")
        return {"epoch": epoch, "train_loss": float(np.dot(losses, self.batch_sizes)) / len(order)}

    def _pass(self, epoch: int, order: np.ndarray, report: TrainReport) -> None:
        """The epoch's batch steps, chunk by chunk; the losses stay in the steps' buffers."""
        layout, steps, source, targets, head = self.layout, self.steps, self.source, self.targets, self.head
        clock, bs, batches = time.perf_counter, layout.batch_size, layout.batches
        on_batch = self._progress(epoch) if self.progress is not None else None
        t_feat = t_decode = t_steps = 0.0
        fill: Callable[[np.ndarray, Any], np.ndarray | None] | None = getattr(source, "features_into", None)
        for first in layout.chunks():
            count = min(layout.per_chunk, batches - first)
            t0 = clock()
            idx = order[first * bs : (first + count) * bs]
            into = steps.into(len(idx)) if fill is not None else None
            F = fill(idx, into) if fill is not None and into is not None else None  # cached rows, decoded into the steps' buffers
            if F is not None:
                t1 = clock()
                steps.load_logits(self._adjusted(F), targets[idx], first)
            else:
                X, F = source.features(idx)
                _check_batch(X, F, len(idx), head)
                t1 = clock()
                steps.load(X, self._adjusted(F), targets[idx], first)
            t2 = clock()
            steps.run(first, count, on_batch)
            t3 = clock()
            t_feat += t1 - t0
            t_decode += t2 - t1
            t_steps += t3 - t2
        report.time_features += t_feat
        report.time_decode += t_decode
        report.time_steps += t_steps

    def _adjusted(self, F: np.ndarray) -> np.ndarray:
        """F plus the logit adjustment, in a new array (F may be the cache's)."""
        return F if self.offset is None else F + self.offset

    def _progress(self, epoch: int) -> Callable[[int], None]:
        progress, steps, epochs, batches = self.progress, self.steps, self.config.epochs, self.layout.batches
        assert progress is not None

        def on_batch(b: int) -> None:
            progress(epoch, epochs, b + 1, batches, steps.batch_loss(b))

        return on_batch


def class_offsets(targets: np.ndarray, tau: float, classes: int) -> np.ndarray | None:
    """tau log(prior) per class (1 x C float32) from the training labels; -inf for a class
    with no sample (its softmax probability and gradient are 0). None when tau is 0."""
    if not tau:
        return None
    counts = np.bincount(targets, minlength=classes).astype(np.float64)
    with np.errstate(divide="ignore"):
        offset = tau * np.log(counts / counts.sum())
    return offset.astype(FLOAT)[None, :]


_DIVERGED_HINT = " (lower the learning rate, or check the features for NaN/inf)"


def _validate(run: _Run, val_idx: np.ndarray) -> dict[str, float]:
    if not len(val_idx):
        return {}
    metrics = evaluate(run.head, run.source, run.targets, run.config.batch_size, loss=run.config.loss, idx=val_idx)
    out = {"val_loss": metrics["loss"]}
    if metrics["accuracy"] is not None:
        out["val_accuracy"] = metrics["accuracy"]
    return out


def _check_finite(params: Mapping[str, np.ndarray], entry: Mapping[str, float], epoch: int) -> None:
    if not all(np.isfinite(p).all() for p in params.values()):
        raise _Diverged(f"adapter weights became non-finite during epoch {epoch}{_DIVERGED_HINT}")
    if not math.isfinite(entry.get("val_loss", 0.0)):
        raise _Diverged(f"validation loss became {entry['val_loss']} at epoch {epoch}{_DIVERGED_HINT}")


def evaluate(
    head: TrainableHead,
    source: FeatureSource,
    y: np.ndarray,
    batch_size: int,
    *,
    loss: Loss = Loss.SOFTMAX_CROSS_ENTROPY,
    idx: np.ndarray | None = None,
) -> dict[str, Any]:
    """Mean loss, accuracy (None for MSE) and count over samples `idx` (default: all of y)."""
    targets = prepare_targets(y, head.num_outputs, loss)
    idx = np.arange(len(targets)) if idx is None else np.asarray(idx)
    loss_fn, classify = LOSSES[loss], loss == Loss.SOFTMAX_CROSS_ENTROPY
    total, correct = 0.0, 0
    for start in range(0, len(idx), batch_size):
        batch = idx[start : start + batch_size]
        X, F = source.features(batch)
        _check_batch(X, F, len(batch), head)
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite loss is the answer
            z = predict_logits(head, X, F)
            total += loss_fn(z, targets[batch])[0] * len(batch)
        if classify:
            correct += int(np.count_nonzero(z.argmax(axis=1) == targets[batch]))
    n = len(idx)
    return {
        "loss": total / n if n else math.nan,
        "accuracy": (correct / n if n else math.nan) if classify else None,
        "n": n,
    }


def predict_logits(head: TrainableHead, X: np.ndarray, F: np.ndarray) -> np.ndarray:
    """The adapted logits F + head(X); keeps no state, so it is safe between forward and backward."""
    z = head.delta_logits(X)
    z += F
    return z


def prepare_targets(y: np.ndarray, num_outputs: int, loss: Loss) -> np.ndarray:
    """Integer labels in [0, C) as int64 for cross-entropy; float32 (N x C) targets for MSE."""
    y = np.asarray(y)
    if loss == Loss.MSE:
        if not np.issubdtype(y.dtype, np.number) or y.size != len(y) * num_outputs:
            raise RuntimeInputError(f"MSE targets must be numbers of shape (N, {num_outputs}), found {y.dtype} {y.shape}")
        return y.astype(FLOAT, copy=False).reshape(len(y), num_outputs)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise RuntimeInputError(f"class labels must be a 1-D integer array, found {y.dtype} of shape {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= num_outputs):
        raise RuntimeInputError(f"class labels must be in [0, {num_outputs}), found {y.min()}..{y.max()}")
    return y.astype(np.int64, copy=False)


def split_indices(y: np.ndarray, val_fraction: float, rng: np.random.Generator, *, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) sample indices; `stratify` keeps each class's share in val."""
    n = len(y)
    if not val_fraction:
        if not n:
            raise RuntimeInputError("no training samples")
        return np.arange(n), np.arange(0)
    perm = rng.permutation(n)
    if stratify:
        grouped = perm[np.argsort(y[perm], kind="stable")]
        _, starts, counts = np.unique(y[grouped], return_index=True, return_counts=True)
        takes = np.rint(counts * val_fraction).astype(np.int64)
        val = np.concatenate([grouped[s : s + k] for s, k in zip(starts, takes)])
    else:
        val = perm[: round(n * val_fraction)]
    in_val = np.zeros(n, bool)
    in_val[val] = True
    train_idx, val_idx = np.flatnonzero(~in_val), np.flatnonzero(in_val)
    if not len(train_idx) or not len(val_idx):
        raise RuntimeInputError(
            f"{n} samples are too few for val_fraction={val_fraction}: {len(train_idx)} would train and {len(val_idx)} validate"
        )
    return train_idx, val_idx


def _check_batch(X: np.ndarray, F: np.ndarray, n: int, head: TrainableHead) -> None:
    if X.shape != (n, head.tap_width) or F.shape != (n, head.num_outputs) or X.dtype != FLOAT or F.dtype != FLOAT:
        raise RuntimeInputError(
            f"feature source returned X {X.dtype}{X.shape} and F {F.dtype}{F.shape} for "
            f"{n} samples; expected float32 ({n}, {head.tap_width}) and ({n}, {head.num_outputs})"
        )


def _copy(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in arrays.items()}


def _copy_into(dst: Mapping[str, np.ndarray], src: Mapping[str, np.ndarray]) -> None:
    for k, v in dst.items():
        v[...] = src[k]


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _require(name: str, value: object, ok: bool, expected: str) -> None:
    if not ok:
        raise RuntimeInputError(f"TrainConfig.{name} must be {expected}, got {value!r}")


def _enum(kind: type[Loss] | type[Optimizer], name: str, value: Any) -> Any:
    try:
        return kind[value] if isinstance(value, str) else kind(value)
    except (KeyError, ValueError):
        known = ", ".join(m.name for m in kind)
        raise RuntimeInputError(f"TrainConfig.{name} must be one of {known}, got {value!r}") from None
