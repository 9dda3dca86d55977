"""A head folded to one weight and bias, z = F + X W + b: what the predict graph binds.

Skip2-LoRA, the last-layer methods and OS-ELM without random features are affine in the
fused tap row X, so evaluating the head's correction at X = 0 and at each unit row gives
W (D x C) and b (C) exactly (up to float32 rounding); heads that know their map say it
directly (cheaper: the daemon's online head is folded after every sample). Heads that are
not affine keep the NumPy predict path.
"""

from __future__ import annotations

import numpy as np

from s2rt.methods import TrainableHead

AFFINE_METHODS = frozenset({"skip2lora", "skiplora", "lora-last", "ft-last", "ft-bias", "oselm"})


def fold(head: TrainableHead) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) with X W + b = head.delta_logits(X) for every X: float32, contiguous, copies."""
    merge = getattr(head, "merged_weight", None)
    if merge is not None:  # Skip2-LoRA: no bias, and the fold is a product of its factors
        return np.ascontiguousarray(merge(), np.float32), np.zeros(head.num_outputs, np.float32)
    affine = getattr(head, "affine", None)
    if affine is not None:
        weight, bias = affine()
        return np.ascontiguousarray(weight, np.float32), np.ascontiguousarray(bias, np.float32)
    width = head.tap_width
    probe = np.zeros((width + 1, width), np.float32)
    probe[1:] = np.eye(width, dtype=np.float32)
    delta = np.asarray(head.delta_logits(probe), np.float32)
    bias = delta[0].copy()
    return np.ascontiguousarray(delta[1:] - bias), bias


class FoldedHead:
    """`fold(head)` remembered until the head, or any of its numbers, changes."""

    def __init__(self) -> None:
        self._made: tuple[TrainableHead, bytes, tuple[np.ndarray, np.ndarray]] | None = None

    def __call__(self, head: TrainableHead) -> tuple[np.ndarray, np.ndarray]:
        numbers = b"".join(p.tobytes() for p in head.parameters().values())
        made = self._made
        if made is None or made[0] is not head or made[1] != numbers:
            made = self._made = (head, numbers, fold(head))
        return made[2]
