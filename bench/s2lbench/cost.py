"""What one fine-tuning step costs each method: update FLOPs per sample and training memory.

Torch methods are measured on one training step of one mini-batch (the second step, so
Adam's state exists and GaLore runs between projector refreshes):
- FLOPs: torch.utils.flop_counter.FlopCounterMode (fvcore-style: matmuls and
  convolutions, forward and backward, 2 FLOPs per multiply-add; element-wise ops, the
  loss, Adam's arithmetic and GaLore's SVD, once every 50 steps, are not counted);
- activations: the bytes autograd saves for backward (saved_tensors_hooks, one count
  per storage, the parameters themselves excluded);
- parameters (every weight and buffer in memory), gradients (trainable ones), optimizer
  state (what the optimizer holds after the step).

s2rt is counted analytically, from the bundle: with taps of total width D over L taps,
rank r and C classes, a cached step costs 4rD + 6LrC FLOPs per sample (H = XA^T,
z = HB^T; dB, dz B, dA), and the frozen forward (measured like the torch forward) runs
once per sample in the first epoch: spread over the run's epochs. Its memory is the
frozen weights, the head, its gradients and Adam state, a mini-batch of taps, hidden
and logits, and the Skip-Cache (one record per fine-tune sample).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

F32 = 4


def _torch_prepare(name: str, context: Any, seed: int) -> tuple[Any, Callable[[list[Any], float], Any] | None]:
    """(model, optimizer factory or None for Adam) exactly as method `name` trains it."""
    import torch

    from s2lbench import methods_peers, methods_torch

    if name in methods_peers.PEERS:
        prepared = methods_peers.prepare(name, context, seed)
        return prepared.model, prepared.make_optimizer
    preparers = {
        "torch-ft-all": methods_torch._select("all"),
        "torch-ft-last": methods_torch._select("last"),
        "torch-ft-bias": methods_torch._select("bias"),
        "peft-lora-all": methods_torch._lora("all", 4),
        "peft-lora-all-matched": methods_torch._lora("all", "matched"),
        "peft-lora-last": methods_torch._lora("last", 4),
    }
    if name not in preparers:
        raise KeyError(f"no cost model for method {name!r}")
    net = copy.deepcopy(context.torch_net())
    torch.manual_seed(seed)
    return preparers[name](net, None, context), None


def forward_flops(net: Any, x: np.ndarray) -> float:
    """Forward FLOPs per sample of a torch module on a batch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.from_numpy(x))
    return counter.get_total_flops() / len(x)


def torch_step(
    model: Any, make_optimizer: Callable[[list[Any], float], Any] | None, x: np.ndarray, y: np.ndarray, lr: float
) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    optimizer = (make_optimizer or torch.optim.Adam)(trainable, lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        optimizer.step()

    step()
    held = {t.untyped_storage().data_ptr() for t in (*params, *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in held:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), FlopCounterMode(display=False) as counter:
        step()
    memory = {
        "parameters": sum(t.numel() for t in (*params, *model.buffers())) * F32,
        "gradients": sum(p.numel() for p in trainable) * F32,
        "optimizer": sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)),
        "activations": sum(saved.values()),
    }
    return {
        "flops_per_sample": counter.get_total_flops() / len(x),
        "trainable": sum(p.numel() for p in trainable),
        "memory_bytes": memory | {"total": sum(memory.values())},
        "counted": "FlopCounterMode, one step (forward, backward, optimizer matmuls)",
    }


def s2rt_step(bundle: Any, net: Any, x: np.ndarray, n_ft: int, epochs: int) -> dict[str, Any]:
    from s2rt.session import new_head

    head = new_head(bundle)
    d = sum(t.size for t in bundle.taps)
    n_taps, r, c = len(bundle.taps), bundle.head.rank, bundle.head.num_outputs
    cached = 4 * r * d + 6 * n_taps * r * c
    frozen = forward_flops(net, x)
    params = head.num_parameters
    weights = sum(p.numel() for p in (*net.parameters(), *net.buffers())) * F32
    memory = {
        "parameters": weights + params * F32,
        "gradients": params * F32,
        "optimizer": 2 * params * F32,
        "activations": len(x) * (d + n_taps * r + 2 * c) * F32,
        "cache": n_ft * bundle.cache.record_size,
    }
    return {
        "flops_per_sample": cached + frozen / epochs,
        "flops_cached_step": cached,
        "flops_frozen_forward": frozen,
        "trainable": params,
        "memory_bytes": memory | {"total": sum(memory.values())},
        "counted": f"analytic: 4rD + 6LrC per cached step (D={d}, L={n_taps}, r={r}, C={c}) + frozen forward / {epochs} epochs",
    }


def method_cost(name: str, family: str, context: Any, x: np.ndarray, y: np.ndarray, lr: float, n_ft: int, epochs: int) -> dict[str, Any]:
    """The cost entry of one method on one mini-batch (x, y) of the workload."""
    if family == "s2rt":
        return s2rt_step(context.bundle(0), context.torch_net(), x, n_ft, epochs)
    model, make_optimizer = _torch_prepare(name, context, 0)
    return torch_step(model, make_optimizer, x, y, lr)
