"""GaLore: Adam in a low-rank projection of each weight's gradient (arXiv 2403.03507).

Written from the paper's description rather than wrapping `galore-torch`: that package
pulls transformers and bitsandbytes (about 15 s to import) and fails on 4-D conv
gradients; the algorithm is a few lines. For a weight W viewed as a matrix G of shape
m x n (a conv's (C_out, C_in/g, k, k) as C_out x C_in/g*k^2, a linear's as is):

- every `update_gap` steps, P = the top-r singular vectors of the current G on its
  shorter side (left if m <= n, right otherwise);
- R = P^T G (or G P): the gradient in the r-dimensional subspace;
- Adam's moments live in R's shape; N = m_hat / (sqrt(v_hat) + eps);
- W -= lr * scale * (P N  or  N P^T): back in the weight's space, so every update lies in
  the span of P.

Weights whose shorter side is not longer than the rank, and every bias, get plain Adam.
Every weight is trained (GaLore is full-parameter training); what shrinks is the
optimizer state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def as_matrix(p: torch.Tensor) -> torch.Tensor:
    """The 2-D view GaLore projects: (C_out, everything else)."""
    return p.reshape(p.shape[0], -1)


def projectable(p: torch.Tensor, rank: int) -> bool:
    return p.dim() >= 2 and min(as_matrix(p).shape) > rank


def projector(g: torch.Tensor, rank: int) -> tuple[torch.Tensor, bool]:
    """(P, left): the top-`rank` singular vectors of g on its shorter side."""
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    left = g.shape[0] <= g.shape[1]
    return (u[:, :rank].contiguous(), True) if left else (vh[:rank].T.contiguous(), False)


class GaLoreAdam(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        rank: int = 4,
        update_gap: int = 50,
        scale: float = 0.25,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if rank < 1 or update_gap < 1:
            raise ValueError(f"GaLore: expected rank >= 1 and update_gap >= 1, found {rank}, {update_gap}")
        super().__init__(params, {"lr": lr, "rank": rank, "update_gap": update_gap, "scale": scale, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        step = state.get("step", 0)
        grad = p.grad
        assert grad is not None
        low_rank = projectable(p, group["rank"])
        if low_rank:
            g = as_matrix(grad)
            if step % group["update_gap"] == 0:
                state["P"], state["left"] = projector(g, group["rank"])
            grad = state["P"].T @ g if state["left"] else g @ state["P"]
        if "m" not in state:
            state["m"], state["v"] = torch.zeros_like(grad), torch.zeros_like(grad)
        beta1, beta2 = group["betas"]
        state["step"] = step = step + 1
        state["m"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["v"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat = state["m"] / (1 - beta1**step)
        v_hat = state["v"] / (1 - beta2**step)
        n = m_hat / (v_hat.sqrt() + group["eps"])
        if low_rank:
            n = (state["P"] @ n if state["left"] else n @ state["P"].T).reshape(p.shape) * group["scale"]
        p.add_(n, alpha=-group["lr"])

    def state_numel(self) -> int:
        """Optimizer-state elements: moments plus projectors."""
        return sum(t.numel() for s in self.state.values() for t in s.values() if isinstance(t, torch.Tensor))
