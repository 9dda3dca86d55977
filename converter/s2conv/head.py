"""Stage 4, head: the initial Skip2-LoRA adapters, one (A_l, B_l) pair per tap.

A_l (rank x d_l) is drawn U(-1/sqrt(d_l), 1/sqrt(d_l)). That is exactly PEFT's LoRA A
init, `kaiming_uniform_(A, a=sqrt(5))`, whose bound is sqrt(6 / ((1 + a^2) d_l)) =
1/sqrt(d_l). B_l is zero (the runtime creates it), so a fresh head changes nothing.

Each tap's A has its own NumPy `Generator` seeded with (seed, tap index): the same seed
gives the same bytes on every machine, and adding a tap leaves the earlier A's unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from s2rt.bundle.model import Head, Loss, Tap, TrainDefaults


def init_head(
    taps: Sequence[Tap],
    num_outputs: int,
    *,
    rank: int,
    alpha: float,
    seed: int,
    loss: Loss = Loss.SOFTMAX_CROSS_ENTROPY,
    defaults: TrainDefaults | None = None,
) -> Head:
    """A head for `taps` with `num_outputs` outputs and seeded random A's."""
    a_init = tuple(init_lora_a(rank, tap.size, seed, index) for index, tap in enumerate(taps))
    return Head(
        rank=rank,
        alpha=float(alpha),
        num_outputs=num_outputs,
        a_init=a_init,
        loss=loss,
        seed=seed,
        defaults=defaults or TrainDefaults(),
    )


def init_lora_a(rank: int, width: int, seed: int, tap_index: int) -> np.ndarray:
    """A (rank x width) float32 matrix, U(-1/sqrt(width), 1/sqrt(width)), C-contiguous."""
    rng = np.random.default_rng([seed, tap_index])
    bound = 1.0 / math.sqrt(width)
    return np.ascontiguousarray(rng.uniform(-bound, bound, size=(rank, width)), dtype=np.float32)
