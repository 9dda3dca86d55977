"""The seed papers' peers in the benchmark: LoRA-C's layer-level delta, GaLore's projected
Adam, the learning-rate grid that grows off its edges, and the cost counters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from s2lbench import lr_grid
from s2lbench.galore import GaLoreAdam, as_matrix, projectable
from s2lbench.lora_c import LoraCConv2d, LoraLinear, apply_lora_c
from torch import nn
from torch.nn import functional as tf

CONVS = {
    "dense": dict(in_channels=6, out_channels=8, kernel_size=3, padding=1),
    "depthwise": dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6),
    "grouped, dilated, strided": dict(in_channels=6, out_channels=4, kernel_size=3, padding=2, dilation=2, groups=2, stride=2),
    "pointwise": dict(in_channels=6, out_channels=5, kernel_size=1),
}


@pytest.mark.parametrize("kind", list(CONVS))
def test_lora_c_factors_the_whole_layer_and_starts_as_the_base_conv(kind):
    torch.manual_seed(0)
    base = nn.Conv2d(**CONVS[kind])
    layer = LoraCConv2d(base, rank=2, alpha=4.0)
    k, g = base.kernel_size[0], base.groups
    assert layer.lora_A.shape == (2 * k, base.in_channels * k)
    assert layer.lora_B.shape == (base.out_channels // g * k, 2 * k)
    assert layer.delta_weight().shape == base.weight.shape
    x = torch.randn(3, 6, 9, 9)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)  # B = 0: nothing changes
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = tf.conv2d(x, base.weight + 2.0 * (layer.lora_B @ layer.lora_A).view(base.weight.shape), base.bias,
                         base.stride, base.padding, base.dilation, base.groups)  # fmt: skip
    torch.testing.assert_close(layer(x), expected)
    assert not torch.allclose(layer(x), base(x))


def test_lora_c_on_a_depthwise_conv_keeps_channels_apart():
    torch.manual_seed(1)
    layer = LoraCConv2d(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), rank=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.zeros(1, 4, 5, 5)
    x[0, 1] = torch.randn(5, 5)  # only channel 1 carries signal
    out = layer(x)
    assert out[0, 1].abs().sum() > 0 and out[0, [0, 2, 3]].abs().sum() == 0


def test_only_the_adapters_train_after_lora_c_is_applied():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleDict({"c": nn.Conv2d(1, 4, 3), "fc": nn.Linear(4, 3)})

    net = Net()
    apply_lora_c(net, rank=2, alpha=4.0)
    assert isinstance(net.layers["c"], LoraCConv2d) and isinstance(net.layers["fc"], LoraLinear)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {f"layers.{m}.lora_{ab}" for m in ("c", "fc") for ab in "AB"}


@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (6, 40), (40, 6)])
def test_galore_keeps_each_update_in_the_projected_subspace(shape):
    torch.manual_seed(2)
    w = nn.Parameter(torch.randn(shape))
    opt = GaLoreAdam([w], lr=0.1, rank=2, update_gap=3)
    for step in range(5):
        before = w.detach().clone()
        w.grad = torch.randn(shape)
        opt.step()
        p, left = opt.state[w]["P"], opt.state[w]["left"]
        delta = as_matrix(w.detach() - before)
        off = delta - (p @ (p.T @ delta) if left else (delta @ p) @ p.T)  # what lies outside span(P)
        assert delta.abs().max() > 0 and off.abs().max() < 1e-5 * delta.abs().max(), step
        assert opt.state[w]["m"].shape == ((2, delta.shape[1]) if left else (delta.shape[0], 2))


def test_galore_refreshes_its_projector_every_update_gap_steps():
    torch.manual_seed(3)
    w = nn.Parameter(torch.randn(6, 20))
    opt = GaLoreAdam([w], lr=0.01, rank=2, update_gap=2)
    seen = []
    for _ in range(4):
        w.grad = torch.randn(6, 20)
        opt.step()
        seen.append(opt.state[w]["P"].clone())
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2]) and torch.equal(seen[2], seen[3])


def test_galore_gives_plain_adam_to_what_it_cannot_project():
    torch.manual_seed(4)
    bias, thin = nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(2, 9))
    assert not projectable(bias, 2) and not projectable(thin, 2)
    reference = [nn.Parameter(t.detach().clone()) for t in (bias, thin)]
    opt, adam = GaLoreAdam([bias, thin], lr=0.05, rank=2), torch.optim.Adam(reference, lr=0.05)
    for _ in range(3):
        grads = [torch.randn(5), torch.randn(2, 9)]
        for p, q, g in zip((bias, thin), reference, grads):
            p.grad, q.grad = g, g.clone()
        opt.step()
        adam.step()
    for p, q in zip((bias, thin), reference):
        torch.testing.assert_close(p.detach(), q.detach())


def test_the_grid_grows_until_its_best_rate_is_inside():
    def evaluate(lr: float) -> dict[str, float]:  # peaks at 0.1
        return {"val_accuracy": 1.0 - abs(np.log10(lr) + 1.0), "val_loss": 0.0}

    scores = lr_grid.search(evaluate, (1e-3, 3e-3), max_extend=5)
    assert lr_grid.best(scores) == pytest.approx(0.1, rel=0.2) and lr_grid.at_edge(scores) is None
    capped = lr_grid.search(evaluate, (1e-3, 3e-3), max_extend=1)
    assert sorted(capped) == pytest.approx([1e-3, 3e-3, 9e-3]) and lr_grid.record(capped)["best_at_edge"] == "high"
    low = lr_grid.search(lambda lr: {"val_accuracy": -lr, "val_loss": 0.0}, (1e-2, 3e-2), max_extend=1)
    assert min(low) == pytest.approx(1e-2 / 3, rel=1e-2)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
@pytest.mark.parametrize("name", ["peft-lora-all", "peft-lora-all-matched", "lora-c-all"])
def test_a_methods_first_run_draws_the_same_init_as_its_later_runs(name):
    """Regression: the first run built the torch mirror (whose module inits draw from torch's
    RNG) after seeding, so its adapters started elsewhere than every later run's."""
    from s2lbench.context import Context
    from s2lbench.methods import Job, registry
    from s2lbench.profiles import PROFILES
    from s2lbench.workloads import load

    workload = load("digits_cnn").subset(48, 32)
    method = registry()[name]
    job = Job(workload, workload.ft, workload.test, 1, 16, 3e-2, 0, PROFILES["edge"])
    context = Context(workload, PROFILES["edge"], 4, 8.0, {}, 2)
    first, second = method.run(job, context), method.run(job, context)
    assert (first.accuracy, first.loss) == (second.accuracy, second.loss)
