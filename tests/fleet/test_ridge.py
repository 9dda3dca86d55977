"""The closed-form fleet round (s2fleet.ridge): the devices' sums give the ridge fit of all
samples in one place, whatever the split, and it arrives as exact Skip2-LoRA adapters."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
from s2conv import ConvertOptions, convert
from s2fleet import ridge
from s2fleet.aggregate import delta
from s2fleet.device import global_accuracy
from s2fleet.partition import partition
from s2fleet.simulate import initial_adapters, load_data
from s2rt.bundle import write_bundle
from s2rt.data import Samples
from s2rt.session import Model

MODELS = Path(__file__).resolve().parents[2] / "models"


@cache
def har(tmp: Path):
    path = tmp / "har_r8.s2l"
    write_bundle(convert(MODELS / "har_mlp.onnx", ConvertOptions(rank=8)), path)
    model = Model.open(str(path))
    return model, load_data(MODELS / "data" / "har_ft.npz", MODELS / "data" / "har_test.npz", model)


def direct_ridge(model: Model, x: np.ndarray, y: np.ndarray, kappa: float, lam: float) -> np.ndarray:
    """The same fit from the stacked samples by least squares on an augmented system (no Gram matrix)."""
    taps, frozen = model.frozen.run(x)
    X, C = np.asarray(taps, np.float64), frozen.shape[1]
    T = kappa * (np.eye(C)[y] - 1.0 / C) - frozen
    reg = np.sqrt(lam * np.mean(np.sum(X**2, axis=0)))
    A = np.vstack([X, reg * np.eye(X.shape[1])])
    b = np.vstack([T, np.zeros((X.shape[1], C))])
    return np.linalg.lstsq(A, b, rcond=None)[0].T


@pytest.mark.parametrize(("name", "devices"), [("shards", 100), ("iid", 7), ("shards", 1000)])
def test_the_sum_over_devices_is_the_fit_of_all_samples(tmp_path_factory, name, devices):
    model, data = har(tmp_path_factory.mktemp("ridge"))
    parts = [ridge.statistics(model, Samples(data.x[i], data.y[i]), kappa=3.0) for i in partition(name, data.y, devices, seed=1)]
    width = model.head.tap_width  # type: ignore[attr-defined]
    got = ridge.fit(parts, width, lam=1e-3)
    want = direct_ridge(model, data.x, data.y, 3.0, 1e-3)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
    assert sum(p.examples for p in parts) == len(data.y)


def test_the_adapters_carry_the_fit_exactly_when_rank_reaches_the_classes(tmp_path_factory):
    model, data = har(tmp_path_factory.mktemp("ridge"))
    head = model.head
    dw = ridge.fit([ridge.statistics(model, Samples(data.x, data.y))], head.tap_width)  # type: ignore[attr-defined]
    adapters = ridge.to_adapters(dw, head.tap_sizes, 8, head.scaling)  # type: ignore[attr-defined]
    np.testing.assert_allclose(np.concatenate(delta(adapters), axis=1) * head.scaling, dw, rtol=1e-4, atol=1e-5 * np.abs(dw).max())
    before = global_accuracy(model, initial_adapters(model), data.test_x, data.test_y)
    after = global_accuracy(model, adapters, data.test_x, data.test_y)
    assert after > before + 0.15  # 0.71 -> 0.96 on the shifted test split


def test_pack_and_unpack_keep_the_symmetric_matrix():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5))
    gram = x.T @ x
    assert ridge.pack(gram).shape == (15,)
    np.testing.assert_array_equal(ridge.unpack(ridge.pack(gram), 5), gram)


def test_bad_statistics_are_refused_by_name():
    good = ridge.Statistics(np.zeros(6, np.float32), np.zeros((3, 2), np.float32), 0.0, 1)
    with pytest.raises(ValueError, match="expected 6 Gram entries for 3 features, got"):
        ridge.fit([good, ridge.Statistics(np.zeros(5, np.float32), good.cross, 0.0, 1)], 3)
    with pytest.raises(ValueError, match=r"expected X\^T T of shape \(3, 2\), got \(3, 4\)"):
        ridge.fit([good, ridge.Statistics(good.gram, np.zeros((3, 4), np.float32), 0.0, 1)], 3)
    with pytest.raises(ValueError, match="no ridge statistics"):
        ridge.fit([], 3)
    with pytest.raises(ValueError, match="ridge lambda"):
        ridge.fit([good], 3, lam=0.0)


def test_a_regression_bundle_fits_the_residual_of_its_targets():
    import dataclasses

    from helpers.tiny import tiny_bundle
    from s2rt.bundle.model import Loss

    base = tiny_bundle(rank=3)
    model = Model(dataclasses.replace(base, head=dataclasses.replace(base.head, loss=Loss.MSE)))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    y = rng.normal(size=(50, 3)).astype(np.float32)
    parts = [ridge.statistics(model, Samples(x[i], y[i])) for i in np.array_split(np.arange(50), 4)]
    taps, frozen = model.frozen.run(x)
    X = np.asarray(taps, np.float64)
    G = X.T @ X
    want = np.linalg.solve(G + 1e-3 * np.mean(np.diag(G)) * np.eye(len(G)), X.T @ (y - frozen)).T
    np.testing.assert_allclose(ridge.fit(parts, X.shape[1]), want, rtol=1e-3, atol=1e-4)


def test_lambda_is_chosen_by_the_error_on_held_out_sums_which_equals_the_error_on_the_held_out_samples(tmp_path_factory):
    from s2rt.heads.sums import targets

    model, data = har(tmp_path_factory.mktemp("ridge"))
    width = model.head.tap_width  # type: ignore[attr-defined]
    devices = [ridge.split_statistics(model, Samples(data.x[i], data.y[i])) for i in partition("shards", data.y, 20, seed=1)]
    train, held = [d[0] for d in devices], [d[1] for d in devices]
    choice = ridge.choose_lambda(train, held, width)
    assert choice.how == "held-out squared error" and set(choice.errors) == set(ridge.LAMBDAS)
    assert choice.errors[choice.lam] == min(choice.errors.values())
    assert max(choice.errors.values()) > 1.05 * choice.errors[choice.lam]  # the grid matters on this data
    # the error from the sums is the error of the fit on the held-out samples themselves
    from s2rt.serve.gate import VAL_FRACTION, held_out

    val = held_out(data.x, VAL_FRACTION)
    taps, frozen = model.frozen.run(data.x[val])
    t = targets(frozen, data.y[val], ridge.KAPPA, regression=False)
    dw = ridge.fit(train, width, choice.lam)
    direct = float(np.sum((np.asarray(taps, np.float64) @ dw.T - t) ** 2))
    assert choice.errors[choice.lam] == pytest.approx(direct, rel=1e-4)
    assert sum(h.examples for h in held) == int(val.sum())


def test_without_held_out_samples_the_default_lambda_is_used():
    empty = ridge.Statistics(np.zeros(6, np.float32), np.zeros((3, 2), np.float32), 0.0, 0)
    some = ridge.Statistics(np.ones(6, np.float32), np.zeros((3, 2), np.float32), 0.0, 4)
    choice = ridge.choose_lambda([some], [empty], 3)
    assert (choice.lam, choice.how) == (ridge.LAMBDA, "default (no held-out samples)")
