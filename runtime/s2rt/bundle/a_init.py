"""The head's initial A in a bundle: stored, or regenerated from the seed (`AInitRule`, since 1.2).

The writer names the rule instead of storing A when every tap's A is, bit for bit, what
`s2rt.lora_init.lora_a` draws from the head's seed; the reader materialises it again, so
`Head.a_init` looks the same to everything downstream whichever way it travelled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from s2rt.bundle.model import AInitRule, Head, Tap
from s2rt.lora_init import MAX_SEED, lora_a


def a_init_rule(head: Head, taps: Sequence[Tap]) -> AInitRule:
    """SPLITMIX64_UNIFORM when `head.a_init` is exactly the seed's generated A, else STORED."""
    if not 0 <= head.seed <= MAX_SEED or head.rank < 1 or len(head.a_init) != len(taps):
        return AInitRule.STORED
    for index, (a, tap) in enumerate(zip(head.a_init, taps)):
        stored = np.asarray(a, dtype=np.float32)  # what a STORED bundle would hold
        if stored.shape != (head.rank, tap.size):
            return AInitRule.STORED
        generated = lora_a(head.rank, tap.size, head.seed, index)
        if not np.array_equal(np.ascontiguousarray(stored).view(np.uint32), generated.view(np.uint32)):
            return AInitRule.STORED
    return AInitRule.SPLITMIX64_UNIFORM


def generated_a_init(rank: int, tap_sizes: Sequence[int], seed: int) -> tuple[np.ndarray, ...]:
    """Every tap's A under SPLITMIX64_UNIFORM, read-only like the reader's stored views."""
    matrices = tuple(lora_a(rank, size, seed, index) for index, size in enumerate(tap_sizes))
    for a in matrices:
        a.setflags(write=False)
    return matrices
