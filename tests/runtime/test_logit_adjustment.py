"""TrainConfig.logit_adjustment: training on z + tau log(prior) against torch autograd and
torch.optim on the same batches; a class the samples lack is left out of the softmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from s2rt.bundle.model import Loss, Optimizer
from s2rt.errors import RuntimeInputError
from s2rt.head import AdapterHead
from s2rt.trainer import TrainConfig, class_offsets, train

SIZES, RANK, CLASSES, N = (5, 7), 3, 4, 24


class ArraySource:
    """Serves rows of fixed arrays; the rows it hands out are copies, as the cache's decode is."""

    def __init__(self, X: np.ndarray, F: np.ndarray) -> None:
        self.X, self.F = X, F

    def features(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.X[idx], self.F[idx]


def problem(labels: np.ndarray, seed: int = 0) -> tuple[AdapterHead, ArraySource]:
    rng = np.random.default_rng(seed)
    a_init = [rng.normal(scale=0.5, size=(RANK, d)).astype(np.float32) for d in SIZES]
    head = AdapterHead(SIZES, RANK, 6.0, CLASSES, a_init)
    head.load_per_tap([(a, rng.normal(scale=0.3, size=(CLASSES, RANK)).astype(np.float32)) for a in a_init])
    X = rng.normal(size=(len(labels), sum(SIZES))).astype(np.float32)
    F = rng.normal(size=(len(labels), CLASSES)).astype(np.float32)
    return head, ArraySource(X, F)


def torch_train(head: AdapterHead, source: ArraySource, y: np.ndarray, config: TrainConfig, offset: np.ndarray) -> list:
    """The same batches in order (no shuffle) through autograd and torch.optim, in float64."""
    pairs = [
        (torch.tensor(a, dtype=torch.float64, requires_grad=True), torch.tensor(b, dtype=torch.float64, requires_grad=True))
        for a, b in head.per_tap()
    ]
    params = [p for pair in pairs for p in pair]
    opt = (
        torch.optim.SGD(params, lr=config.learning_rate)
        if config.optimizer == Optimizer.SGD
        else torch.optim.Adam(params, lr=config.learning_rate)
    )
    X, F = (torch.tensor(v, dtype=torch.float64) for v in (source.X, source.F))
    bias = torch.tensor(offset, dtype=torch.float64)
    for _ in range(config.epochs):
        for start in range(0, len(y), config.batch_size):
            rows = slice(start, start + config.batch_size)
            xs = torch.split(X[rows], list(SIZES), dim=1)
            z = F[rows] + bias + head.scaling * sum(x @ a.T @ b.T for x, (a, b) in zip(xs, pairs))
            opt.zero_grad()
            torch.nn.functional.cross_entropy(z, torch.tensor(y[rows])).backward()
            opt.step()
    return [(a.detach().numpy(), b.detach().numpy()) for a, b in pairs]


@pytest.mark.parametrize("optimizer", [Optimizer.SGD, Optimizer.ADAM])
@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_training_matches_torch_on_adjusted_logits(tau, optimizer):
    y = np.random.default_rng(5).choice([0, 2, 3], size=N, p=[0.6, 0.3, 0.1])  # class 1 absent, the rest skewed
    head, source = problem(y)
    config = TrainConfig(epochs=3, batch_size=8, learning_rate=0.05, optimizer=optimizer, shuffle=False, logit_adjustment=tau)
    counts = np.bincount(y, minlength=CLASSES)
    with np.errstate(divide="ignore"):
        offset = tau * np.log(counts / N)
    expected = torch_train(head, source, y, config, offset)
    start = head.per_tap()

    train(head, source, y, config)

    for (a, b), (ta, tb), (_, b0) in zip(head.per_tap(), expected, start):
        np.testing.assert_allclose(a, ta, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b, tb, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(b[1], b0[1])  # the absent class's row of B gets no gradient
        assert not np.allclose(b, b0)


def test_without_adjustment_the_absent_class_is_pushed_down():
    """The contrast to the test above: plain cross-entropy moves the absent class's row too."""
    y = np.random.default_rng(5).choice([0, 2, 3], size=N)
    head, source = problem(y)
    b0 = head.per_tap()[0][1]
    train(head, source, y, TrainConfig(epochs=2, batch_size=8, learning_rate=0.05, optimizer=Optimizer.SGD, shuffle=False))
    assert not np.allclose(head.per_tap()[0][1][1], b0[1])


def test_the_adjustment_leaves_the_source_rows_alone():
    y = np.zeros(N, np.int64)
    head, source = problem(y)
    F = source.F.copy()
    train(head, source, y, TrainConfig(epochs=1, batch_size=N, logit_adjustment=1.0))
    np.testing.assert_array_equal(source.F, F)


def test_offsets_are_tau_log_prior_and_minus_inf_for_absent_classes():
    got = class_offsets(np.array([0, 0, 0, 2]), 2.0, 4)
    np.testing.assert_allclose(got[0, [0, 2]], 2.0 * np.log([0.75, 0.25]), rtol=1e-6)
    assert got[0, 1] == got[0, 3] == -np.inf
    assert class_offsets(np.array([0, 1]), 0.0, 2) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logit_adjustment": -1.0}, "logit_adjustment must be a finite number >= 0, got -1.0"),
        ({"logit_adjustment": float("inf")}, "logit_adjustment must be a finite number >= 0"),
        ({"logit_adjustment": 1.0, "loss": Loss.MSE}, "logit_adjustment=1.0 needs loss SOFTMAX_CROSS_ENTROPY, got MSE"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs, match):
    with pytest.raises(RuntimeInputError, match=match):
        TrainConfig(**kwargs)


def test_a_closed_form_head_refuses_the_adjustment():
    from s2rt.heads.oselm import OSELMHead

    y = np.zeros(N, np.int64)
    _, source = problem(y)
    with pytest.raises(RuntimeInputError, match="closed-form head takes 0"):
        train(OSELMHead(SIZES, CLASSES), source, y, TrainConfig(logit_adjustment=1.0))
