"""The NumPy Skip2-LoRA head and its losses against torch autograd on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from s2rt.bundle.model import Head, Loss
from s2rt.errors import RuntimeInputError, StateError
from s2rt.head import AdapterHead
from s2rt.loss import LOSSES, mse, softmax_cross_entropy

SHAPES = [  # tap sizes, rank, classes, batch
    pytest.param((5,), 1, 3, 4, id="one-tap-rank1"),
    pytest.param((7, 4, 9), 4, 5, 16, id="three-taps"),
    pytest.param((48, 96, 96), 4, 7, 32, id="har-mlp"),
    pytest.param((3, 1, 6, 2), 2, 2, 1, id="batch-of-one"),
]


def make_head(sizes, rank, classes, *, seed=0, alpha=8.0, random_b=True) -> AdapterHead:
    rng = np.random.default_rng(seed)
    a_init = [rng.normal(size=(rank, d)).astype(np.float32) for d in sizes]
    head = AdapterHead(sizes, rank, alpha, classes, a_init)
    if random_b:
        head.load_per_tap([(a, rng.normal(scale=0.5, size=(classes, rank)).astype(np.float32)) for a in a_init])
    return head


def make_batch(sizes, classes, n, *, seed=1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, sum(sizes))).astype(np.float32)
    F = rng.normal(size=(n, classes)).astype(np.float32)
    y = rng.integers(0, classes, n)
    return X, F, y


def torch_oracle(head: AdapterHead, X, F, target, loss: Loss):
    """z, loss and per-tap (dA, dB) computed by autograd in float64, tap by tap (unfused)."""
    pairs = [
        (torch.tensor(a, dtype=torch.float64, requires_grad=True), torch.tensor(b, dtype=torch.float64, requires_grad=True))
        for a, b in head.per_tap()
    ]
    xs = torch.split(torch.tensor(X, dtype=torch.float64), list(head.tap_sizes), dim=1)
    z = torch.tensor(F, dtype=torch.float64) + head.scaling * sum(x @ a.T @ b.T for x, (a, b) in zip(xs, pairs))
    if loss == Loss.SOFTMAX_CROSS_ENTROPY:
        value = torch.nn.functional.cross_entropy(z, torch.tensor(target))
    else:
        value = torch.nn.functional.mse_loss(z, torch.tensor(target, dtype=torch.float64))
    value.backward()
    grads = [(a.grad.numpy(), b.grad.numpy()) for a, b in pairs]
    return z.detach().numpy(), value.item(), grads


@pytest.mark.parametrize("loss", list(Loss))
@pytest.mark.parametrize(("sizes", "rank", "classes", "n"), SHAPES)
def test_forward_and_every_tap_gradient_match_torch(sizes, rank, classes, n, loss):
    head = make_head(sizes, rank, classes)
    X, F, y = make_batch(sizes, classes, n)
    target = y if loss == Loss.SOFTMAX_CROSS_ENTROPY else np.random.default_rng(2).normal(size=(n, classes)).astype(np.float32)
    z_ref, loss_ref, grads_ref = torch_oracle(head, X, F, target, loss)

    z = head.forward(X, F)
    value, dz = LOSSES[loss](z, target)
    head.backward(dz)

    assert z.dtype == np.float32 and dz.dtype == np.float32
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-4)
    assert value == pytest.approx(loss_ref, rel=1e-5)
    grads = head.per_tap(grad=True)
    assert len(grads) == len(sizes)
    for t, ((da, db), (da_ref, db_ref)) in enumerate(zip(grads, grads_ref)):
        assert np.abs(da_ref).max() > 1e-3 and np.abs(db_ref).max() > 1e-3, "oracle gradient is trivially zero"
        np.testing.assert_allclose(da, da_ref, rtol=1e-4, atol=1e-5 * np.abs(da_ref).max(), err_msg=f"dA.{t}")
        np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=1e-5 * np.abs(db_ref).max(), err_msg=f"dB.{t}")
    assert head.grads["theta"].dtype == np.float32


def test_backward_uses_the_latest_batch_after_the_buffers_grew_and_shrank():
    sizes, rank, classes = (6, 3), 2, 4
    head = make_head(sizes, rank, classes)
    for n in (8, 3):  # a big batch, then a smaller one reusing the same buffers
        X, F, y = make_batch(sizes, classes, n, seed=n)
        head.backward(softmax_cross_entropy(head.forward(X, F), y)[1])
    _, _, grads_ref = torch_oracle(head, X, F, y, Loss.SOFTMAX_CROSS_ENTROPY)
    for (da, db), (da_ref, db_ref) in zip(head.per_tap(grad=True), grads_ref):
        np.testing.assert_allclose(da, da_ref, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=1e-6)


def test_a_fresh_head_changes_nothing_and_only_b_gets_a_gradient():
    sizes, rank, classes = (5, 8), 4, 3
    head = make_head(sizes, rank, classes, random_b=False)
    X, F, y = make_batch(sizes, classes, 10)
    z = head.forward(X, F)
    assert np.array_equal(z, F)
    assert not head.delta_logits(X).any()
    head.backward(softmax_cross_entropy(z, y)[1])
    for da, db in head.per_tap(grad=True):
        assert not da.any()
        assert np.abs(db).max() > 1e-3


def test_delta_logits_is_forward_minus_frozen_logits():
    head = make_head((4, 6), 3, 5)
    X, F, _ = make_batch((4, 6), 5, 7)
    np.testing.assert_allclose(head.delta_logits(X), head.forward(X, F) - F, rtol=1e-5, atol=1e-5)


def test_per_tap_round_trip_and_state_names():
    source, target = make_head((3, 5, 2), 2, 4, seed=1), make_head((3, 5, 2), 2, 4, seed=2)
    assert not np.array_equal(source.parameters()["theta"], target.parameters()["theta"])
    target.load_per_tap(source.per_tap())
    assert np.array_equal(source.parameters()["theta"], target.parameters()["theta"])

    state = source.state_dict()
    assert list(state) == ["A.0", "B.0", "A.1", "B.1", "A.2", "B.2"]
    assert state["A.1"].shape == (2, 5) and state["B.2"].shape == (4, 2)
    fresh = make_head((3, 5, 2), 2, 4, seed=3)
    fresh.load_state_dict(state)
    assert np.array_equal(fresh.parameters()["theta"], source.parameters()["theta"])


def test_per_tap_returns_copies():
    head = make_head((3, 4), 2, 3)
    before = head.parameters()["theta"].copy()
    for a, b in head.per_tap():
        a += 1.0
        b += 1.0
    assert np.array_equal(head.parameters()["theta"], before)


def test_parameters_are_the_flat_weights_the_optimizer_updates():
    head = make_head((3, 4), 2, 3)
    theta = head.parameters()["theta"]
    assert theta.size == head.num_parameters == 2 * 7 + 3 * 2 * 2
    theta[:] = 0.0  # in-place updates are what the forward sees
    X, F, _ = make_batch((3, 4), 3, 5)
    assert np.array_equal(head.forward(X, F), F)


def test_num_parameters_matches_the_bundle_head():
    head = make_head((48, 96, 96), 4, 7)
    spec = Head(rank=4, alpha=8.0, num_outputs=7, a_init=tuple(a for a, _ in head.per_tap()))
    assert head.num_parameters == spec.num_parameters


@pytest.mark.parametrize(
    "pairs",
    [
        pytest.param(lambda p: p[:1], id="too-few-taps"),
        pytest.param(lambda p: [(p[0][0].T, p[0][1]), p[1]], id="A-transposed"),
        pytest.param(lambda p: [p[0], (p[1][0], p[1][1][:, :1])], id="B-narrow"),
        pytest.param(lambda p: [(np.full_like(p[0][0], np.nan), p[0][1]), p[1]], id="nan"),
    ],
)
def test_load_per_tap_rejects_a_mismatched_state_and_keeps_the_weights(pairs):
    head = make_head((3, 4), 2, 3)
    before = head.parameters()["theta"].copy()
    with pytest.raises(StateError):
        head.load_per_tap(pairs(head.per_tap()))
    assert np.array_equal(head.parameters()["theta"], before)


def test_load_state_dict_names_missing_arrays():
    head = make_head((3, 4), 2, 3)
    state = head.state_dict()
    del state["B.1"]
    with pytest.raises(StateError, match="B.1"):
        head.load_state_dict(state)


def test_initial_a_of_the_wrong_shape_is_rejected():
    with pytest.raises(RuntimeInputError, match="tap 1"):
        AdapterHead((3, 4), 2, 8.0, 3, [np.zeros((2, 3), np.float32), np.zeros((2, 5), np.float32)])


def test_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1e4, 0.0, -1e4], [-3e4, 3e4, 0.0]], np.float32)
    y = np.array([0, 2])
    value, dz = softmax_cross_entropy(z, y)
    assert np.isfinite(value) and value == pytest.approx(3e4 / 2, rel=1e-6)
    np.testing.assert_allclose(dz, [[0, 0, 0], [0, 0.5, -0.5]], atol=1e-6)


def test_mse_accepts_a_flat_target_for_one_output():
    z = np.array([[1.0], [2.0], [4.0]], np.float32)
    value, dz = mse(z, np.array([1.0, 1.0, 1.0], np.float32))
    assert value == pytest.approx((0 + 1 + 9) / 3)
    np.testing.assert_allclose(dz, [[0.0], [2 / 3], [2.0]], rtol=1e-6)


def test_the_loss_registry_covers_every_loss_code():
    assert set(LOSSES) == set(Loss)
