"""Learning-rate selection: the rules, the folds they read, and that the bench applies one rule
to every method (short and long budget alike). Fake methods whose validation scores are a known
function of the rate stand in for training, so each pick is known in advance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from s2lbench import lr_grid, lr_select
from s2lbench.methods import Job, Method, RunResult
from s2lbench.profiles import PROFILES
from s2lbench.suite import BenchConfig, long_rounds, tune
from s2lbench.workloads import Data, Workload, stratified_folds


def scores(*rows: tuple[float, ...]) -> lr_select.Scores:
    keys = ("val_accuracy", "val_loss", "val_calibrated_loss")
    return {row[0]: dict(zip(keys, row[1:])) for row in rows}


# accuracy on a small split peaks at 0.03 by one sample; the plain cross-entropy is lowest at
# 3e-3 (the least confident); at each model's best temperature, 0.01 ranks the classes best
NOISY = scores(
    (1e-3, 0.80, 0.70, 0.66), (3e-3, 0.85, 0.37, 0.36), (1e-2, 0.871, 0.38, 0.33), (3e-2, 0.886, 0.51, 0.40), (1e-1, 0.80, 5.7, 0.9)
)


def test_each_rule_picks_by_its_own_score_and_the_bench_uses_the_calibrated_loss():
    assert lr_select.by_loss(NOISY) == 3e-3
    assert lr_select.by_calibrated_loss(NOISY) == 1e-2
    assert lr_select.by_accuracy(NOISY) == 3e-2
    assert lr_grid.best(NOISY) == 1e-2 and lr_grid.DEFAULT_RULE == "calibrated-loss"
    assert lr_grid.best(NOISY, "accuracy") == 3e-2 and lr_grid.best(NOISY, "loss") == 3e-3


def test_a_diverged_rate_is_never_the_lowest_loss_and_ties_go_to_accuracy():
    s = scores((1e-3, 0.9, 0.5), (1e-2, 0.99, math.nan), (1e-1, 0.95, 0.5))
    assert lr_select.by_loss(s) == 1e-1


def test_smoothed_accuracy_averages_each_rate_with_its_neighbours():
    s = scores((1e-3, 0.5, 1.0), (3e-3, 0.8, 1.0), (1e-2, 0.8, 1.0), (3e-2, 0.9, 1.0), (1e-1, 0.1, 1.0))
    assert lr_select.by_accuracy(s) == 3e-2 and lr_select.by_smoothed_accuracy(s) == 1e-2


def test_an_unknown_rule_is_refused_by_name_before_anything_trains():
    calls = []
    with pytest.raises(ValueError, match="lr rule: expected one of loss, calibrated-loss, accuracy, smoothed-accuracy, got 'median'"):
        lr_grid.search(lambda lr: calls.append(lr) or {"val_accuracy": 1.0, "val_loss": 0.0}, (1e-3, 1e-2), 2, "median")
    assert calls == []


def test_pooled_scores_weigh_each_fold_by_its_size():
    p = lr_select.pooled([{"val_accuracy": 1.0, "val_loss": 0.1, "n": 30}, {"val_accuracy": 0.0, "val_loss": 1.0, "n": 10}])
    assert p == pytest.approx({"val_accuracy": 0.75, "val_loss": 0.325, "n": 40})


def test_the_grid_grows_under_the_default_rule_until_its_lowest_calibrated_loss_is_inside():
    def evaluate(lr: float) -> dict[str, float]:
        return {"val_accuracy": 0.5, "val_loss": 0.0, "val_calibrated_loss": (math.log10(lr) + 1) ** 2}

    scores_ = lr_grid.search(evaluate, (1e-3, 3e-3), 6)
    assert lr_grid.best(scores_) == pytest.approx(0.1, rel=0.2) and lr_grid.record(scores_)["best_at_edge"] is None
    assert lr_grid.record(scores_)["rule"] == "calibrated-loss"


def test_stratified_folds_cover_every_sample_once_keep_class_shares_and_follow_the_seed():
    y = np.repeat(np.arange(3), [11, 20, 32])
    folds = stratified_folds(y, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(y)))
    counts = np.array([np.bincount(y[f], minlength=3) for f in folds])
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all()
    assert all((a == b).all() for a, b in zip(folds, stratified_folds(y, 5, seed=0)))
    assert any((a != b).any() for a, b in zip(folds, stratified_folds(y, 5, seed=1)))
    with pytest.raises(ValueError, match="folds: expected an integer >= 2, got 1"):
        stratified_folds(y, 1, seed=0)


def toy_workload(n: int = 50) -> Workload:
    ft = Data(np.arange(n, dtype=np.float32)[:, None], np.arange(n) % 2)  # x is each sample's id
    return Workload("toy", Path("unused.onnx"), ft, ft, ("a", "b"), "mlp")


class Fake:
    """A method whose calibrated validation loss is lowest at `best[schedule]`; its accuracy peaks one
    step higher, its plain cross-entropy one step lower."""

    def __init__(self, best: dict[str, float]) -> None:
        self.best, self.jobs = best, []

    def __call__(self, job: Job, context: object) -> RunResult:
        self.jobs.append(job)
        distance = math.log10(job.lr) - math.log10(self.best[job.schedule])
        accuracy, loss = 0.9 - abs(distance - 0.5) * 0.1, 0.3 + (distance + 0.5) ** 2
        return RunResult(0.001, accuracy, loss, 10, calibrated_loss=0.2 + distance**2)


def test_every_method_is_picked_by_pooled_calibrated_loss_and_each_sample_is_validated_once_per_rate():
    workload, profile = toy_workload(), PROFILES["edge"]
    ft_all, head = Fake({"constant": 2.7e-3}), Fake({"constant": 2.7e-2})  # points of the grids grown by 3x steps
    methods = [Method("torch-ft-all", "FT", "torch", (1e-4, 3e-4), ft_all), Method("s2rt-skip2relu", "head", "s2rt", (1e-3, 3e-3), head)]
    config = BenchConfig(epochs=2, val_folds=5, grid_extend=6)
    tuned = tune(workload, methods, None, config, profile, {})
    assert tuned["torch-ft-all"]["lr"] == 2.7e-3 and tuned["s2rt-skip2relu"]["lr"] == 2.7e-2
    for name, fake in (("torch-ft-all", ft_all), ("s2rt-skip2relu", head)):
        t = tuned[name]
        assert t["rule"] == "calibrated-loss" and t["val_folds"] == 5 and t["best_at_edge"] is None and t["schedule"] == "constant"
        assert all(g["n"] == 50 for g in t["grid"])  # the folds pooled: every sample scored once per rate
        for lr in {job.lr for job in fake.jobs}:
            jobs = [job for job in fake.jobs if job.lr == lr]
            assert len(jobs) == 5 and all(job.epochs == 2 and job.seed == 0 for job in jobs)
            assert sorted(np.concatenate([job.eval.x[:, 0] for job in jobs]).tolist()) == list(range(50))
            assert all(not set(job.train.x[:, 0]) & set(job.eval.x[:, 0]) for job in jobs)


def test_the_long_budget_tunes_its_own_peak_rate_by_the_same_rule_at_its_epochs_and_schedule():
    workload, profile = toy_workload(), PROFILES["edge"]
    fake = Fake({"constant": 1e-2, "cosine": 3.33e-2})
    methods = [Method("torch-ft-all", "FT", "torch", (3e-3, 1e-2), fake), Method("torch-ft-last", "last", "torch", (1e-2,), fake)]
    config = BenchConfig(epochs=3, val_folds=2, grid_extend=4, long_factor=4, repeats=2)
    long = long_rounds(workload, methods, None, config, profile, {})
    assert set(long) == {"torch-ft-all"}  # only LONG_METHODS get the longer budget
    row = long["torch-ft-all"]
    assert row["lr"] == 3.33e-2 and row["epochs"] == 12 and row["tuning"]["schedule"] == "cosine"
    assert {(job.epochs, job.schedule) for job in fake.jobs} == {(12, "cosine")}
    again = long_rounds(workload, methods, None, config, profile, {}, known=long)  # another profile reuses the rates
    assert again["torch-ft-all"]["lr"] == row["lr"]


def test_the_study_counts_agreement_spread_and_regret_per_rule():
    def seed(best: str) -> dict:
        fold = {lr: {"accuracy": 0.9, "loss": 0.2 if lr == best else 0.5, "n": 10} for lr in ("0.001", "0.01", "0.1")}
        return {"folds": [fold, fold], "test": {"0.001": 0.8, "0.01": 0.9, "0.1": 0.7}}

    method = {"grid": [0.001, 0.01, 0.1], "seeds": [seed("0.01"), seed("0.1")]}
    p = lr_select.study_picks(method, "loss", None)
    assert p["picks"] == [0.01, 0.1] and not p["agree"] and p["spread"] == 1 and p["oracle"] == 0.01
    assert p["regret"] == pytest.approx(0.1)


def test_the_calibrated_loss_ignores_confidence_and_still_scores_the_ranking():
    from s2lbench.methods import calibrated_cross_entropy, cross_entropy

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    z = rng.normal(size=(200, 4)) + 2.0 * np.eye(4)[y]  # ranks the true class first most of the time
    for k in (0.3, 3.0, 10.0):  # under- and over-confident copies of the same ranking
        assert calibrated_cross_entropy(k * z, y) == pytest.approx(calibrated_cross_entropy(z, y), rel=2e-3)
        assert calibrated_cross_entropy(k * z, y) <= cross_entropy(k * z, y) + 1e-12
    assert cross_entropy(10.0 * z, y) > 2 * cross_entropy(z, y)  # plain cross-entropy punishes the confident copy
    worse = z.copy()
    worse[:100] = rng.normal(size=(100, 4))  # half the samples lose their ranking
    assert calibrated_cross_entropy(worse, y) > calibrated_cross_entropy(z, y) + 0.1


def test_the_calibrated_loss_rule_picks_by_its_own_score():
    s = {
        1e-3: {"val_accuracy": 0.80, "val_loss": 0.50, "val_calibrated_loss": 0.45},
        1e-2: {"val_accuracy": 0.86, "val_loss": 0.60, "val_calibrated_loss": 0.38},  # better ranked, overconfident
        1e-1: {"val_accuracy": 0.70, "val_loss": 2.00, "val_calibrated_loss": 0.90},
    }
    assert lr_select.by_calibrated_loss(s) == 1e-2 and lr_select.by_loss(s) == 1e-3
