"""Where the trainer's features come from: the Skip-Cache on a hit, the frozen forward on a miss."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from s2rt.cache import SkipCache, sample_keys
from s2rt.frozen import FrozenModel

DECODE_BYTES = 64 << 20  # default bound on the decoded features of one chunk of an epoch
DECODED_COPIES = 3  # float32 copies of a chunk alive at once: decoding, the served rows, the trainer's per-tap buffers
FORWARD_ROWS = 128  # samples per frozen-segment run: bounds the backend's activation memory


class CachedFeatures:
    """Serves (X, F) for sample indices of one data set.

    With `cache=None` every request runs the frozen segment (the "no Skip-Cache"
    baseline); otherwise a sample runs it once, the first time it is seen.
    `prefetch_rows` tells the trainer how many rows to ask for in one call: the whole
    epoch when its decoded float32 copies fit in `max_bytes` (default DECODE_BYTES),
    else as many rows as do (the trainer rounds down to whole batches, at least one).
    """

    def __init__(self, frozen: FrozenModel, x: np.ndarray, y: np.ndarray, cache: SkipCache | None, max_bytes: int | None = None) -> None:
        self.frozen = frozen
        width = sum(t.size for t in frozen.bundle.taps) + frozen.num_outputs
        budget = DECODE_BYTES if max_bytes is None else max_bytes
        self.prefetch_rows = max(1, min(len(x), budget // (DECODED_COPIES * 4 * width)))
        self.x = frozen.check_input(x)
        self.y = y
        self.cache = cache
        self.hits = 0
        self.misses = 0
        self.frozen_seconds = 0.0
        if cache is not None:
            self.keys = sample_keys(self.x)
            self.slots = cache.lookup(self.keys)

    def _forward(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        if len(idx) <= FORWARD_ROWS:
            out = self.frozen.run(self.x[idx])
        else:
            parts = [self.frozen.run(self.x[idx[i : i + FORWARD_ROWS]]) for i in range(0, len(idx), FORWARD_ROWS)]
            out = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        self.frozen_seconds += time.perf_counter() - start
        self.misses += len(idx)
        return out

    def features(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.cache is None:
            return self._forward(idx)
        slots = self.slots[idx]
        miss = slots < 0
        if not miss.any():
            self.hits += len(idx)
            return self.cache.gather(slots)
        if miss.all():
            x, f = self._forward(idx)
        else:
            x = np.empty((len(idx), self.cache.width), dtype=np.float32)
            f = np.empty((len(idx), self.frozen.num_outputs), dtype=np.float32)
            hit = ~miss
            x[hit], f[hit] = self.cache.gather(slots[hit])
            self.hits += int(hit.sum())
            x[miss], f[miss] = self._forward(idx[miss])
        missed = idx[miss]
        self.slots[missed] = self.cache.put(self.keys[missed], x[miss], f[miss], self.y[missed])
        return x, f

    def features_into(self, idx: np.ndarray, taps: Sequence[tuple[slice, float, np.ndarray]]) -> np.ndarray | None:
        """The trainer's fast path: when every sample of `idx` is cached, write factor * X[:, cols]
        into each (cols, factor, out) straight from the cache records (decoding on the way) and
        return F; otherwise None, having written nothing (then call `features`)."""
        if self.cache is None:
            return None
        slots = self.slots[idx]
        if (slots < 0).any():
            return None
        self.hits += len(idx)
        self.cache.gather_taps(slots, taps)
        return self.cache.logits[slots]

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
