"""OS-ELM (s2rt.heads.oselm) and recursive least squares (s2rt.heads.rls): RLS in chunks and
one sample at a time equals the batch ridge solution (numpy.linalg.solve); `fit` equals the
ridge solution over the standardized taps for the kappa and lambda it picked; random
features come back from the seed; online `learn` equals refitting with the new sample."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.tiny import tiny_bundle, tiny_weights
from s2rt.data import Samples
from s2rt.errors import RuntimeInputError, StateError
from s2rt.heads.oselm import (
    KAPPAS,
    LAMBDAS,
    MAX_RANDOM_FEATURES,
    RANDOM_FEATURES,
    OSELMHead,
    _Accumulator,
    _final_solution,
    _Held,
    _OnePass,
    _spectrum,
    random_features,
)
from s2rt.heads.rls import RecursiveRidge, ridge_solve
from s2rt.heads.standardize import safe_std
from s2rt.session import Model
from s2rt.trainer import TrainConfig, split_indices


class ArraySource:
    def __init__(self, X: np.ndarray, F: np.ndarray, prefetch_rows: int = 13) -> None:
        self.X, self.F, self.prefetch_rows = X, F, prefetch_rows

    def features(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.X[idx], self.F[idx]


def problem(n=60, dim=9, outputs=4, seed=0):
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(n, dim)) * rng.uniform(0.1, 10, size=dim)
    return phi, rng.normal(size=(n, outputs))


def batch_ridge(phi, target, lam):
    return np.linalg.solve(phi.T @ phi + lam * np.eye(phi.shape[1]), phi.T @ target)


@pytest.mark.parametrize("chunk", [1, 7, 60])
@pytest.mark.parametrize("lam", [1e-3, 1.0, 50.0])
def test_rls_in_chunks_equals_the_batch_ridge_solution(chunk, lam):
    phi, target = problem()
    rls = RecursiveRidge(phi.shape[1], target.shape[1], lam)
    for start in range(0, len(phi), chunk):
        rls.update(phi[start : start + chunk], target[start : start + chunk])
    want = batch_ridge(phi, target, lam)
    np.testing.assert_allclose(rls.beta, want, rtol=1e-7, atol=1e-9 * np.abs(want).max())
    np.testing.assert_allclose(rls.P, np.linalg.inv(phi.T @ phi + lam * np.eye(phi.shape[1])), rtol=1e-6, atol=1e-12)
    assert rls.rows == len(phi)


def test_one_sample_updates_after_a_batch_start_equal_the_batch_solution():
    phi, target = problem(n=80)
    start = RecursiveRidge.from_gram(phi[:50].T @ phi[:50], phi[:50].T @ target[:50], 0.5, 50)
    for i in range(50, 80):
        start.update(phi[i], target[i])
    np.testing.assert_allclose(start.beta, batch_ridge(phi, target, 0.5), rtol=1e-8, atol=1e-10)
    assert start.rows == 80


def test_rls_refuses_a_non_positive_lambda():
    with pytest.raises(ValueError, match="lambda must be > 0"):
        RecursiveRidge(3, 2, 0.0)


def data(n=150, sizes=(5, 7), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, sum(sizes))) * 2
    X = (centres[y] + rng.normal(size=(n, sum(sizes)))) * np.arange(1, sum(sizes) + 1) + 3.0
    X[:, 2] = 4.0  # a constant feature: std 1, contributes nothing
    F = rng.normal(size=(n, classes))
    return X.astype(np.float32), F.astype(np.float32), y


def reference_fit(head: OSELMHead, X, F, y, idx, kappa, lam):
    """What fit must give for (kappa, lam): ridge over [u, 1(, relu(R u + b))] of the rows idx, float64."""
    x = X[idx].astype(np.float64)
    mean = x.mean(axis=0)
    std = safe_std(x.std(axis=0), head.tap_sizes)
    u = ((X[idx] - mean.astype(np.float32)) * (1 / std.astype(np.float32))).astype(np.float32)
    phi = head.phi(u).astype(np.float64)
    onehot = np.eye(head.num_outputs)[y[idx]] - 1.0 / head.num_outputs
    return batch_ridge(phi, kappa * onehot - F[idx].astype(np.float64), lam)


@pytest.mark.parametrize("features", [0, 32, 200])  # 200: more features than fit rows (the kernel side)
@pytest.mark.parametrize("val_fraction", [0.0, 0.25])
def test_fit_is_the_ridge_solution_for_the_picked_kappa_and_lambda(features, val_fraction):
    X, F, y = data()
    head = OSELMHead((5, 7), 3, features, seed=3)
    config = TrainConfig(seed=2, val_fraction=val_fraction)
    train_idx, val_idx = split_indices(y, val_fraction, np.random.default_rng(2), stratify=True)
    report = head.fit(ArraySource(X, F), y, train_idx, val_idx, config)
    assert head.kappa in KAPPAS and head.lam > 0
    want = reference_fit(head, X, F, y, train_idx, head.kappa, head.lam)
    np.testing.assert_allclose(head.beta, want, rtol=2e-4, atol=2e-5 * np.abs(want).max())
    assert report.epochs_run == 1 and 0 <= report.history[0]["val_accuracy"] <= 1
    assert f"kappa={head.kappa:g}" in report.message
    z = head.forward(X, F)
    assert np.mean(z.argmax(axis=1) == y) > np.mean(F.argmax(axis=1) == y) + 0.3  # it learned the classes


def test_learn_one_sample_equals_refitting_with_it():
    X, F, y = data(n=120)
    head = OSELMHead((5, 7), 3, 0)
    train = np.arange(100)
    head.fit(ArraySource(X, F), y, train, np.arange(0), TrainConfig())
    kappa, lam = head.kappa, head.lam
    for i in range(100, 104):
        head.learn(X[i : i + 1], F[i : i + 1], y[i : i + 1])
    s = head.standardizer  # learn keeps the fit's standardization: the reference uses it too
    u = ((X[:104] - s.mean) * s.inv_std).astype(np.float32)
    phi = head.phi(u).astype(np.float64)
    target = kappa * (np.eye(3)[y[:104]] - 1 / 3) - F[:104]
    np.testing.assert_allclose(head.beta, batch_ridge(phi, target, lam), rtol=1e-4, atol=1e-5)


def test_learn_before_fit_is_refused():
    head = OSELMHead((5, 7), 3, 0)
    X, F, y = data(n=4)
    with pytest.raises(RuntimeInputError, match="fit the head first"):
        head.learn(X, F, y)


def test_random_features_come_back_from_the_seed():
    r, b = random_features(64, 12, 5)
    r2, b2 = random_features(64, 12, 5)
    np.testing.assert_array_equal(r, r2)
    np.testing.assert_array_equal(b, b2)
    assert not np.array_equal(r, random_features(64, 12, 6)[0])
    assert abs(float(np.var(r)) * 12 - 1.0) < 0.2  # unit-variance rows on standardized taps
    assert b.min() >= -1 and b.max() < 1


def test_the_model_trains_oselm_in_one_pass_and_round_trips_its_state(tmp_path):
    model = Model(tiny_bundle(tiny_weights()), method="oselm")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    before = np.mean(model.classify(x)[0] == y)
    result = model.fine_tune(Samples(x, y), TrainConfig(epochs=20))
    assert result.report.epochs_run == 1 and (result.cache_misses, result.cache_hits) == (96, 0)  # one pass: statistics and Gram together
    assert np.mean(model.classify(x)[0] == y) > before + 0.2
    model.save_adapters(tmp_path / "o.npz")
    again = Model(tiny_bundle(tiny_weights()))
    again.load_adapters(tmp_path / "o.npz")
    assert again.method.name == "oselm"
    np.testing.assert_array_equal(again.logits(x), model.logits(x))


def test_oselm_has_no_gradient_step():
    head = OSELMHead((5, 7), 3)
    with pytest.raises(RuntimeInputError, match="closed form"):
        head.backward(np.zeros((2, 3), np.float32))


def test_too_few_samples_are_named():
    X, F, y = data(n=6)
    with pytest.raises(RuntimeInputError, match="oselm needs at least 10 labelled samples .* got 6"):
        OSELMHead((5, 7), 3).fit(ArraySource(X, F), y, np.arange(6), np.arange(0), TrainConfig())


def test_the_model_learns_one_sample_at_a_time_after_oselm():
    model = Model(tiny_bundle(tiny_weights()), method="oselm")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    model.fine_tune(Samples(x[:60], y[:60]), TrainConfig())
    before = model.head.beta.copy()
    for i in range(60, 120):
        model.learn(x[i : i + 1], y[i : i + 1])
    assert not np.array_equal(model.head.beta, before)
    taps, F = model.frozen.run(x)
    s = model.head.standardizer
    phi = model.head.phi(((taps - s.mean) * s.inv_std).astype(np.float32)).astype(np.float64)
    target = model.head.kappa * (np.eye(3)[y] - 1 / 3) - F
    np.testing.assert_allclose(model.head.beta, batch_ridge(phi, target, model.head.lam), rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeInputError, match="skip2lora cannot learn sample by sample"):
        Model(tiny_bundle(tiny_weights())).learn(x[:1], y[:1])


def test_a_regression_bundle_is_refused_by_name():
    X, F, y = data(n=40)
    with pytest.raises(RuntimeInputError, match="oselm fits classifiers.*MSE"):
        OSELMHead((5, 7), 3).fit(ArraySource(X, F), y, np.arange(40), np.arange(0), TrainConfig(loss="MSE"))


def test_an_oselm_rf_file_with_another_feature_count_loads_with_that_count():
    """oselm-rf files from the earlier 1,024-feature default keep loading: the count comes from beta's rows."""
    X, F, y = data()
    old = OSELMHead((5, 7), 3, 1024, seed=3)
    old.fit(ArraySource(X, F), y, np.arange(150), np.arange(0), TrainConfig())
    head = OSELMHead((5, 7), 3, RANDOM_FEATURES, seed=3)
    assert RANDOM_FEATURES != 1024 and head.beta.shape != old.beta.shape
    head.load_state_dict(old.state_dict())
    assert head.features == 1024 and head.num_parameters == old.num_parameters
    np.testing.assert_array_equal(head.forward(X, F), old.forward(X, F))
    linear = OSELMHead((5, 7), 3, 0)
    with pytest.raises(StateError, match=r"beta: expected shape \(13, 3\)"):
        linear.load_state_dict(old.state_dict())  # oselm does not turn into oselm-rf


@pytest.mark.parametrize("rows", [5 + 7 + 1, 5 + 7 + 1 + MAX_RANDOM_FEATURES + 1])
def test_an_oselm_rf_file_with_no_or_too_many_features_is_refused_by_name(rows):
    head = OSELMHead((5, 7), 3, RANDOM_FEATURES, seed=3)
    state = head.state_dict() | {"beta": np.zeros((rows, 3), np.float32)}
    with pytest.raises(StateError, match=f"random features, found {rows} rows"):
        head.load_state_dict(state)
    assert head.features == RANDOM_FEATURES


@pytest.mark.parametrize("features", [100, 300])
def test_the_kernel_side_picks_what_the_gram_side_picks(features):
    """With fewer fit rows than features the selection decomposes Phi Phi^T instead of Phi^T Phi:
    the same validation predictions, so the same kappa, lambda and metrics."""
    X, F, y = data(n=150)
    head = OSELMHead((5, 7), 3, features, seed=3)
    head.standardizer.fit(ArraySource(X, F), np.arange(150), head.tap_sizes)
    acc = _Accumulator(head, ArraySource(X, F), y, np.arange(110), np.arange(110, 150))
    assert acc.fit_phi is not None and acc.fit_phi.shape == (110, head.dim)
    kernel = head._select(acc)
    acc.fit_phi = None  # the Gram side
    gram = head._select(acc)
    assert kernel[:2] == gram[:2]
    assert kernel[2]["val_accuracy"] == gram[2]["val_accuracy"]
    assert kernel[2]["val_loss"] == pytest.approx(gram[2]["val_loss"], rel=1e-6)


def test_enough_fit_rows_keep_no_copy_of_them():
    X, F, y = data(n=150)
    head = OSELMHead((5, 7), 3, 32, seed=3)
    head.standardizer.fit(ArraySource(X, F), np.arange(150), head.tap_sizes)
    assert _Accumulator(head, ArraySource(X, F), y, np.arange(110), np.arange(110, 150)).fit_phi is None


def test_the_one_pass_sums_equal_standardizing_first_then_accumulating():
    """_OnePass measures the standardization and the Gram matrix in the same pass (raw sums,
    centred afterwards): the same mean, std and sums as a moments pass followed by a pass over
    the standardized rows, a constant feature included (data() has one, and an offset of 3)."""
    X, F, y = data(n=150)
    fit, held = np.arange(110), np.arange(110, 150)
    for held_in_moments, moment_rows in ((True, np.arange(150)), (False, fit)):
        slow, fast = OSELMHead((5, 7), 3, 0), OSELMHead((5, 7), 3, 0)
        slow.standardizer.fit(ArraySource(X, F), moment_rows, slow.tap_sizes)
        want = _Accumulator(slow, ArraySource(X, F), y, fit, held)
        got = _OnePass(fast, ArraySource(X, F), y, fit, held, held_in_moments=held_in_moments)
        np.testing.assert_allclose(fast.standardizer.mean, slow.standardizer.mean, rtol=1e-6)
        np.testing.assert_allclose(fast.standardizer.std, slow.standardizer.std, rtol=1e-6)
        assert fast.standardizer.std[2] == 1.0  # the constant feature
        for name in ("gram", "cross_y", "cross_f", "held_cross_y", "held_cross_f", "held_phi", "held_f"):
            a, b = getattr(got, name), getattr(want, name)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=name)
        assert got.gram[2].tolist() == [0.0] * len(got.gram)  # exactly: it drops out of the eigendecomposition
        for name in ("sq_y", "sq_yf", "sq_f", "rows"):
            assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-9)


def brute_force_pick(acc):
    """The straightforward selection: one ridge solve and one held-out prediction per (lam, kappa)."""
    scale = np.trace(acc.gram) / len(acc.gram)
    best = None
    for tau in LAMBDAS:
        lam = tau * scale
        for kappa in KAPPAS:
            z = acc.held_f + acc.held_phi @ ridge_solve(acc.gram, kappa * acc.cross_y - acc.cross_f, lam)
            z = z - z.max(axis=1, keepdims=True)
            loss = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), acc.held_y]))
            accuracy = float(np.mean(z.argmax(axis=1) == acc.held_y))
            if best is None or (accuracy, -loss) > best[:2]:
                best = (accuracy, -loss, kappa, lam)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_eigenbasis_selection_picks_what_a_solve_per_grid_point_picks(seed):
    X, F, y = data(n=150, seed=seed)
    head = OSELMHead((5, 7), 3, 0)
    acc = _OnePass(head, ArraySource(X, F), y, np.arange(110), np.arange(110, 150), held_in_moments=True)
    kappa, lam, val = head._select(acc)
    accuracy, neg_loss, want_kappa, want_lam = brute_force_pick(acc)
    assert (kappa, lam) == (want_kappa, pytest.approx(want_lam, rel=1e-12))
    assert val["val_accuracy"] == accuracy and val["val_loss"] == pytest.approx(-neg_loss, rel=1e-8)


@pytest.mark.parametrize("with_held", [False, True])
def test_the_final_solution_from_the_eigenbasis_is_the_ridge_solve(with_held):
    """Without the held-out rows: v diag(1/(e + lam)) v^T cross; with a few of them (fewer than
    dim / 2): the matrix inversion lemma. A feature that is 0 on every fit row but not on the
    held-out ones (left out of the eigendecomposition) included."""
    rng = np.random.default_rng(4)
    fit_phi, held_phi = rng.normal(size=(80, 14)), rng.normal(size=(5, 14))
    fit_phi[:, 3] = 0.0
    target = rng.normal(size=(80, 3))
    acc = _Held(fit_phi.T @ fit_phi, fit_phi.T @ target, np.zeros((14, 3)), held_phi, np.zeros((5, 3)), np.zeros(5, np.int64))
    spectrum = _spectrum(acc)
    assert spectrum.live is not None and 3 not in spectrum.live
    gram = acc.gram + held_phi.T @ held_phi if with_held else acc.gram
    cross = acc.cross_y + held_phi.T @ rng.normal(size=(5, 3)) if with_held else acc.cross_y
    for lam in (1e-3, 0.7, 40.0):
        got = _final_solution(acc, spectrum, lambda: gram, cross, lam, with_held=with_held)  # type: ignore[arg-type]
        np.testing.assert_allclose(got, ridge_solve(gram, cross, lam), rtol=1e-8, atol=1e-10)
