"""skip2relu (s2rt.heads.nonlinear) and the tap standardization: forward and every tap's
gradient against torch autograd in float64, statistics against NumPy, state round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.tiny import tiny_bundle, tiny_weights
from s2rt.bundle.model import Loss
from s2rt.data import Samples
from s2rt.errors import RuntimeInputError, StateError
from s2rt.heads.nonlinear import Skip2ReLUHead, relu_a_init
from s2rt.heads.standardize import Standardizer, safe_std, tap_moments
from s2rt.loss import LOSSES
from s2rt.session import Model
from s2rt.trainer import TrainConfig

SHAPES = [  # tap sizes, rank, classes, batch
    pytest.param((5,), 1, 3, 4, id="one-tap-rank1"),
    pytest.param((7, 4, 9), 4, 5, 16, id="three-taps"),
    pytest.param((48, 96, 96), 16, 7, 32, id="har-mlp-r16"),
    pytest.param((3, 1, 6, 2), 2, 2, 1, id="batch-of-one"),
]


class ArraySource:
    """A feature source over fixed arrays (what the Skip-Cache serves)."""

    def __init__(self, X: np.ndarray, F: np.ndarray, prefetch_rows: int = 7) -> None:
        self.X, self.F, self.prefetch_rows = X, F, prefetch_rows

    def features(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.X[idx], self.F[idx]


def make_head(sizes, rank, classes, seed=0) -> Skip2ReLUHead:
    rng = np.random.default_rng(seed)
    head = Skip2ReLUHead(sizes, rank, classes, relu_a_init(rank, sizes, seed))
    state = {k: rng.normal(scale=0.5, size=v.shape).astype(np.float32) for k, v in head.state_dict().items()}
    state["mean"] = rng.normal(size=sum(sizes)).astype(np.float32)
    state["std"] = rng.uniform(0.5, 2.0, size=sum(sizes)).astype(np.float32)
    head.load_state_dict(state)
    return head


def torch_oracle(head: Skip2ReLUHead, X, F, target, loss: Loss):
    """z, loss and per-tap (dA, dc, dB) by autograd in float64, tap by tap (unfused), standardization explicit."""
    state = head.state_dict()
    mean, std = (torch.tensor(state[k], dtype=torch.float64) for k in ("mean", "std"))
    u = (torch.tensor(X, dtype=torch.float64) - mean) / std
    us = torch.split(u, list(head.tap_sizes), dim=1)
    params = [
        tuple(torch.tensor(state[f"{p}.{t}"], dtype=torch.float64, requires_grad=True) for p in "AcB") for t in range(len(head.tap_sizes))
    ]
    z = torch.tensor(F, dtype=torch.float64) + sum(torch.relu(x @ a.T + c) @ b.T for x, (a, c, b) in zip(us, params))
    if loss == Loss.SOFTMAX_CROSS_ENTROPY:
        value = torch.nn.functional.cross_entropy(z, torch.tensor(target))
    else:
        value = torch.nn.functional.mse_loss(z, torch.tensor(target, dtype=torch.float64))
    value.backward()
    return z.detach().numpy(), value.item(), [tuple(p.grad.numpy() for p in ps) for ps in params]


def batch(sizes, classes, n, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=0.3, scale=1.5, size=(n, sum(sizes))).astype(np.float32)
    return X, rng.normal(size=(n, classes)).astype(np.float32), rng.integers(0, classes, n)


@pytest.mark.parametrize("loss", list(Loss))
@pytest.mark.parametrize(("sizes", "rank", "classes", "n"), SHAPES)
def test_forward_and_every_tap_gradient_match_torch(sizes, rank, classes, n, loss):
    head = make_head(sizes, rank, classes)
    X, F, y = batch(sizes, classes, n)
    target = y if loss == Loss.SOFTMAX_CROSS_ENTROPY else np.random.default_rng(2).normal(size=(n, classes)).astype(np.float32)
    z_ref, loss_ref, grads_ref = torch_oracle(head, X, F, target, loss)

    z = head.forward_taps(head.split_taps(X), F)
    value, dz = LOSSES[loss](z, target)
    head.backward(dz)

    assert z.dtype == np.float32
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(head.delta_logits(X) + F, z_ref, rtol=1e-5, atol=1e-4)
    assert value == pytest.approx(loss_ref, rel=1e-5)
    grad = head.grads["theta"]
    got = [(da, dc, db) for da, dc, db in zip(head._dA, np.split(head._dc, len(sizes)), np.split(head._dB, len(sizes), axis=1))]
    assert grad.dtype == np.float32
    assert max(np.abs(ref[2]).max() for ref in grads_ref) > 1e-3, "oracle dB is trivially zero"
    for t, (mine, ref) in enumerate(zip(got, grads_ref)):
        for name, g, g_ref in zip("AcB", mine, ref):
            scale = np.abs(g_ref).max()
            np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5 * max(scale, 1e-3), err_msg=f"d{name}.{t}")


def test_a_new_head_changes_nothing_and_its_a_is_seeded():
    sizes = (6, 5)
    one, again = (Skip2ReLUHead(sizes, 16, 3, relu_a_init(16, sizes, 7)) for _ in range(2))
    X, F, _ = batch(sizes, 3, 9)
    np.testing.assert_array_equal(one.forward(X, F), F)
    np.testing.assert_array_equal(one.parameters()["theta"], again.parameters()["theta"])
    other = Skip2ReLUHead(sizes, 16, 3, relu_a_init(16, sizes, 8))
    assert not np.array_equal(one.parameters()["theta"], other.parameters()["theta"])


def test_tap_moments_are_numpys_mean_and_std_in_any_chunking():
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(53, 6)) * [1, 10, 0.1, 1e3, 1, 1] + [0, 5, -3, 1e4, 0, 2]).astype(np.float32)
    idx = rng.permutation(53)[:41]
    for rows in (1, 7, 100):
        mean, std = tap_moments(ArraySource(X, X[:, :1], rows), idx, 6)
        np.testing.assert_allclose(mean, X[idx].astype(np.float64).mean(axis=0), rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(std, X[idx].astype(np.float64).std(axis=0), rtol=1e-9)


def test_constant_features_get_std_1_and_near_constant_ones_a_floor():
    std = safe_std(np.array([0.0, 1e-9, 2.0, 2.0, 0.0, 3.0]), (4, 2))
    assert std[0] == 1.0 and std[4] == 1.0
    assert std[1] == pytest.approx(0.01 * np.sqrt((1e-18 + 8) / 3))
    assert std[2] == std[3] == 2.0 and std[5] == 3.0


def test_standardizer_refuses_bad_statistics():
    s = Standardizer(3)
    with pytest.raises(StateError, match=r"std: every entry must be > 0"):
        s.set(np.zeros(3), np.array([1.0, 0.0, 1.0]))
    with pytest.raises(StateError, match=r"mean: expected shape \(3,\), found \(2,\)"):
        s.set(np.zeros(2), np.ones(3))


def samples(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return Samples(rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, n))


def tiny_model(method="skip2relu") -> Model:
    return Model(tiny_bundle(tiny_weights()), method=method)


def test_fine_tune_standardizes_by_the_training_taps_and_lowers_the_loss(tmp_path):
    model, data = tiny_model(), samples()
    result = model.fine_tune(data, TrainConfig(epochs=8, batch_size=16, learning_rate=0.02, seed=1))
    losses = [e["train_loss"] for e in result.report.history]
    assert losses[-1] < 0.8 * losses[0]
    taps, _ = model.frozen.run(data.x)
    np.testing.assert_allclose(model.head.standardizer.mean, taps.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.head.standardizer.std, safe_std(taps.astype(np.float64).std(axis=0), (6, 5)), rtol=1e-5)
    model.save_adapters(tmp_path / "a.npz")
    again = tiny_model("skip2lora")
    again.load_adapters(tmp_path / "a.npz")
    assert again.method.name == "skip2relu"
    np.testing.assert_array_equal(again.logits(data.x), model.logits(data.x))
    # continuing from the file keeps its statistics: A and c were learned on them
    before = again.head.standardizer.mean.copy()
    again.fine_tune(samples(seed=5), TrainConfig(epochs=1, batch_size=16, learning_rate=0.02))
    np.testing.assert_array_equal(again.head.standardizer.mean, before)


def test_state_without_statistics_is_refused():
    head = tiny_model().head
    state = head.state_dict()
    del state["std"]
    with pytest.raises(StateError, match=r"missing \['std'\]"):
        head.load_state_dict(state)


def test_shapes_are_checked():
    with pytest.raises(RuntimeInputError, match="initial A must be 4 x d_l"):
        Skip2ReLUHead((3, 2), 4, 2, [np.zeros((4, 3), np.float32)])


def test_statistics_come_from_the_training_split_only():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(50, 11)).astype(np.float32)
    X[40:] += 100.0  # what validation holds must not move the statistics
    head = Skip2ReLUHead((6, 5), 4, 3, relu_a_init(4, (6, 5), 0))
    head.prepare(ArraySource(X, X[:, :3]), np.arange(40))
    np.testing.assert_allclose(head.standardizer.mean, X[:40].mean(axis=0), rtol=1e-5, atol=1e-6)
