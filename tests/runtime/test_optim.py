"""SGD and Adam against torch.optim on the same gradients, step by step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from s2rt.bundle.model import Optimizer
from s2rt.errors import RuntimeInputError, StateError
from s2rt.optim import SGD, Adam, make_optimizer

SHAPES = {"A": (4, 30), "B": (7, 12)}
STEPS = 6


def params_and_grads(seed=0):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    grads = [{k: rng.normal(scale=10.0 ** (i % 3 - 1), size=s).astype(np.float32) for k, s in SHAPES.items()} for i in range(STEPS)]
    return params, grads


def check_against_torch(make_ours, make_torch, new_lr=None, planned=False):
    """Our steps against torch's, weights compared after each. `new_lr(i)`: a rate set on both
    before step i (or None); `planned`: every step's constants made up front and the gradients
    written pre-scaled into the optimizer's buffers, as the fused loop does."""
    params, grads = params_and_grads()
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    ours, theirs = make_ours(params), make_torch(list(tparams.values()))
    start = {k: v.copy() for k, v in params.items()}
    scale = ours.grad_scale
    if planned:
        ours.plan(len(grads))
    for i, g in enumerate(grads):
        lr = new_lr(i) if new_lr else None
        if lr is not None:
            ours.lr = theirs.param_groups[0]["lr"] = lr
        if planned:
            for k, buf in ours.grad_buffers.items():
                np.multiply(g[k], scale, out=buf)
            ours.update()
        else:
            ours.step(g)
        for k, p in tparams.items():
            p.grad = torch.tensor(g[k])
        theirs.step()
        for k, p in params.items():
            np.testing.assert_allclose(p, tparams[k].detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=f"{k} after step {ours.steps}")
    assert all(not np.allclose(params[k], start[k]) for k in params), "the steps did not move the weights"


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="plain"),
        pytest.param({"momentum": 0.9}, id="momentum"),
        pytest.param({"weight_decay": 0.05}, id="weight-decay"),
        pytest.param({"momentum": 0.8, "weight_decay": 0.01}, id="both"),
    ],
)
def test_sgd_matches_torch(kwargs):
    check_against_torch(lambda p: SGD(p, 0.05, **kwargs), lambda p: torch.optim.SGD(p, lr=0.05, **kwargs))


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"betas": (0.8, 0.99), "eps": 1e-6}, id="custom"),
        pytest.param({"betas": (0.0, 0.5), "eps": 1e-3}, id="no-momentum"),
    ],
)
@pytest.mark.parametrize("lr", [1e-3, 0.1])
def test_adam_matches_torch(lr, kwargs):
    check_against_torch(lambda p: Adam(p, lr, **kwargs), lambda p: torch.optim.Adam(p, lr=lr, **kwargs))


MAKERS = [lambda p: SGD(p, 0.1, momentum=0.9), lambda p: SGD(p, 0.1), lambda p: Adam(p, 0.01)]
MAKER_IDS = ["sgd-momentum", "sgd", "adam"]


def resume(make, save, load) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Weights after 6 steps straight through, and after 3 steps, save, load into a fresh optimizer, 3 more."""
    params, grads = params_and_grads()
    other = {k: v.copy() for k, v in params.items()}
    a = make(params)
    for g in grads[:3]:
        a.step(g)
    state = save(a)
    for k in other:
        other[k][...] = params[k]
    b = make(other)
    load(b, state)
    assert b.steps == 3
    for g in grads[3:]:
        a.step(g)
        b.step(g)
    return params, other


@pytest.mark.parametrize("make", MAKERS, ids=MAKER_IDS)
def test_snapshot_restores_bit_identically(make):
    params, other = resume(make, lambda o: o.snapshot(), lambda o, s: o.restore(s))
    for k in params:
        assert np.array_equal(params[k], other[k])


@pytest.mark.parametrize("make", MAKERS, ids=MAKER_IDS)
def test_state_dict_resumes_within_float32_rounding(make):
    # Adam stores v / c internally (see s2rt.optim), so torch's v round-trips to within an ulp
    params, other = resume(make, lambda o: o.state_dict(), lambda o, s: o.load_state_dict(s))
    for k in params:
        np.testing.assert_allclose(params[k], other[k], rtol=1e-6, atol=1e-7)


def test_adam_state_dict_is_torchs_state():
    params, grads = params_and_grads()
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    ours, theirs = Adam(params, 0.01, betas=(0.8, 0.99)), torch.optim.Adam(list(tparams.values()), lr=0.01, betas=(0.8, 0.99))
    for g in grads:
        ours.step(g)
        for k, p in tparams.items():
            p.grad = torch.tensor(g[k])
        theirs.step()
    state = ours.state_dict()
    for k, p in tparams.items():
        for name in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(state[f"{name}.{k}"], theirs.state[p][name].numpy(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("make", MAKERS, ids=MAKER_IDS)
def test_the_fused_path_steps_like_step(make):
    """Writing grad_scale * g into grad_buffers, planning ahead, then update() is step(g)."""
    params, grads = params_and_grads()
    other = {k: v.copy() for k, v in params.items()}
    plain, fused = make(params), make(other)
    fused.plan(len(grads))
    for g in grads:
        plain.step(g)
        for k, buf in fused.grad_buffers.items():
            np.multiply(g[k], np.float32(fused.grad_scale), out=buf)
        fused.update()
    assert fused.steps == plain.steps == len(grads)
    for k in params:
        np.testing.assert_allclose(params[k], other[k], rtol=1e-6, atol=1e-7)


def test_state_dict_is_a_snapshot_not_a_view():
    params, grads = params_and_grads()
    opt = Adam(params, 0.01)
    opt.step(grads[0])
    state = opt.state_dict()
    saved = {k: v.copy() for k, v in state.items()}
    opt.step(grads[1])
    assert all(np.array_equal(state[k], saved[k]) for k in state)
    assert set(state) == {"steps", "exp_avg.A", "exp_avg.B", "exp_avg_sq.A", "exp_avg_sq.B"}


def test_load_state_dict_rejects_a_mismatch():
    params, _ = params_and_grads()
    opt = Adam(params, 0.01)
    state = opt.state_dict()
    with pytest.raises(StateError, match="exp_avg.A"):
        opt.load_state_dict(state | {"exp_avg.A": np.zeros((3, 3), np.float32)})
    with pytest.raises(StateError, match="missing"):
        opt.load_state_dict({k: v for k, v in state.items() if k != "steps"})
    with pytest.raises(StateError, match="unexpected"):
        SGD(params, 0.1).load_state_dict(state)


def test_step_leaves_the_gradients_alone():
    params, grads = params_and_grads()
    saved = {k: v.copy() for k, v in grads[0].items()}
    opt = SGD(params, 0.1, momentum=0.9, weight_decay=0.1)
    opt.step(grads[0])
    opt.step(grads[0])
    assert all(np.array_equal(grads[0][k], saved[k]) for k in saved)


def test_make_optimizer_follows_the_bundle_code():
    params, _ = params_and_grads()
    sgd, adam = make_optimizer(Optimizer.SGD, params, 0.5), make_optimizer(Optimizer.ADAM, params, 0.01)
    assert isinstance(sgd, SGD) and sgd.lr == 0.5 and sgd.momentum == 0.0
    assert isinstance(adam, Adam) and adam.lr == 0.01 and adam.betas == (0.9, 0.999)
    with pytest.raises(RuntimeInputError, match="SGD, ADAM"):
        make_optimizer(7, params, 0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make",
    [
        lambda p: SGD(p, 0.0),
        lambda p: SGD(p, float("nan")),
        lambda p: SGD(p, 0.1, momentum=1.0),
        lambda p: SGD(p, 0.1, weight_decay=-1.0),
        lambda p: Adam(p, -0.1),
        lambda p: Adam(p, 0.1, betas=(0.9, 1.0)),
        lambda p: Adam(p, 0.1, eps=0.0),
    ],
)
def test_bad_hyper_parameters_are_rejected(make):
    params, _ = params_and_grads()
    with pytest.raises(RuntimeInputError):
        make(params)


@pytest.mark.parametrize("planned", [False, True], ids=["step", "planned-run"])
@pytest.mark.parametrize(
    ("make_ours", "make_torch"),
    [
        pytest.param(lambda p: SGD(p, 0.05), lambda p: torch.optim.SGD(p, lr=0.05), id="sgd"),
        pytest.param(lambda p: SGD(p, 0.05, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), id="sgd-momentum"),
        pytest.param(lambda p: Adam(p, 0.01), lambda p: torch.optim.Adam(p, lr=0.01), id="adam"),
    ],
)
def test_a_new_learning_rate_applies_to_the_next_steps_as_in_torch(make_ours, make_torch, planned):
    """What a schedule does each epoch: set lr between steps (torch: param_group["lr"]); with
    `planned`, the constants of every step were made up front, as the fused loop does."""
    rates = {2: 0.015, 4: 0.001}
    check_against_torch(make_ours, make_torch, new_lr=rates.get, planned=planned)
