"""LoRA-C: a layer-level low-rank delta for every convolution (arXiv 2410.16954).

Written from the paper's description, not copied. For a Conv2d with weight
(C_out, C_in/g, k, k) the delta is one matrix product viewed as that weight:

    A: (r*k) x (C_in*k)        kaiming-uniform, seeded by torch's generator
    B: (C_out/g*k) x (r*k)     zeros, so a new adapter changes nothing
    delta_W = scale * (B @ A).view(C_out, C_in/g, k, k),  scale = alpha / r

(B @ A has (C_out/g*k) * (C_in*k) = C_out * C_in/g * k^2 entries: exactly the weight's.)
The layer runs conv2d(x, W + delta_W) with the base layer's stride, padding, dilation
and groups, so depthwise and dilated convolutions need no special case: the delta
lives in the weight's own space and never mixes channels the base layer keeps apart.
Linear layers get the plain LoRA pair (the k = 1 case).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as tf


def _kaiming(shape: tuple[int, int]) -> nn.Parameter:
    a = torch.empty(shape)
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    return nn.Parameter(a)


class LoraCConv2d(nn.Module):
    """A frozen Conv2d plus a layer-level low-rank delta of its weight."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float) -> None:
        super().__init__()
        k_h, k_w = base.kernel_size
        if k_h != k_w:
            raise ValueError(f"LoRA-C: expected a square kernel, found {base.kernel_size}")
        if rank < 1:
            raise ValueError(f"LoRA-C: expected rank >= 1, found {rank}")
        self.base, self.rank, self.scale, self.k = base, rank, alpha / rank, k_h
        base.requires_grad_(False)
        c_out, c_in_g = base.weight.shape[:2]
        c_in, g = c_in_g * base.groups, base.groups
        self.lora_A = _kaiming((rank * k_h, c_in * k_h))
        self.lora_B = nn.Parameter(torch.zeros(c_out // g * k_h, rank * k_h))

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.lora_B @ self.lora_A).view(self.base.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        return tf.conv2d(x, b.weight + self.delta_weight(), b.bias, b.stride, b.padding, b.dilation, b.groups)


class LoraLinear(nn.Module):
    """A frozen Linear plus the LoRA pair: y = base(x) + scale * x A^T B^T."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base, self.rank, self.scale = base, rank, alpha / rank
        base.requires_grad_(False)
        self.lora_A = _kaiming((rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def delta_weight(self) -> torch.Tensor:
        return self.scale * self.lora_B @ self.lora_A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.lora_A.T) @ self.lora_B.T


WRAPPERS: dict[type, Any] = {nn.Conv2d: LoraCConv2d, nn.Linear: LoraLinear}


def apply_lora_c(net: Any, rank: int, alpha: float) -> list[str]:
    """Replace every layer of an OnnxNet (its `layers` dict) with its LoRA-C wrapper, in place;
    the rest of the net is frozen. Returns a note per layer wider in adapter than in weight."""
    net.requires_grad_(False)
    notes = []
    for name in list(net.layers):
        layer = net.layers[name]
        wrapped = WRAPPERS[type(layer)](layer, rank, alpha)
        net.layers[name] = wrapped
        adapter = wrapped.lora_A.numel() + wrapped.lora_B.numel()
        if adapter >= layer.weight.numel():
            notes.append(f"{name} ({adapter} adapter vs {layer.weight.numel()} weights)")
    return notes
