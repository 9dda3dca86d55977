"""Stage 4, head: the initial Skip2-LoRA adapters, one (A_l, B_l) pair per tap.

A_l (rank x d_l) is drawn U(-1/sqrt(d_l), 1/sqrt(d_l)). That is exactly PEFT's LoRA A
init, `kaiming_uniform_(A, a=sqrt(5))`, whose bound is sqrt(6 / ((1 + a^2) d_l)) =
1/sqrt(d_l). B_l is zero (the runtime creates it), so a fresh head changes nothing.

The draw is the runtime's `s2rt.lora_init.lora_a(rank, d_l, seed, l)`: a counter-based
generator with one stream per (seed, tap index), the same float32 bytes on every machine
and NumPy version, and adding a tap leaves the earlier A's unchanged. So the bundle need
not store A: the writer names the rule and the device regenerates it from the seed
(format 1.2, s2l.fbs `AInitRule`). `seed` is 0..2^63-1.
"""

from __future__ import annotations

from collections.abc import Sequence

from s2rt.bundle.model import Head, Loss, Tap, TrainDefaults
from s2rt.lora_init import lora_a


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
    """A head for `taps` with `num_outputs` outputs and seeded random A's; ValueError for a seed outside 0..2^63-1."""
    a_init = tuple(lora_a(rank, tap.size, seed, index) for index, tap in enumerate(taps))
    return Head(
        rank=rank,
        alpha=float(alpha),
        num_outputs=num_outputs,
        a_init=a_init,
        loss=loss,
        seed=seed,
        defaults=defaults or TrainDefaults(),
    )

