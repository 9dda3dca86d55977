"""The runtime's library API: one bundle, one backend, one adapter head.

    model = Model.open("bundle.s2l")
    model.fine_tune(load_samples("ft.npz", model.bundle.input, ...), TrainConfig(...), method="skip2lora")
    model.save_adapters("adapters.npz")
    labels, probs = model.predict(x)
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2rt.backend import open_backend
from s2rt.bundle import Bundle, Loss
from s2rt.cache import CHECK_BYTES, SkipCache, records_offset, records_within
from s2rt.data import Samples
from s2rt.errors import RuntimeInputError, StateError
from s2rt.features import CachedFeatures
from s2rt.frozen import FrozenModel
from s2rt.head import AdapterHead
from s2rt.methods import DEFAULT_METHOD, TrainableHead, get_method, skip2lora_head
from s2rt.progress import ProgressCallback
from s2rt.state import load_state, save_state
from s2rt.trainer import TrainConfig, TrainReport, predict_logits, train
from s2rt.trust import TrustedKeys, open_trusted

MIB = 1 << 20


@dataclass(frozen=True)
class FineTuneResult:
    report: TrainReport
    seconds: float
    cache_hits: int
    cache_misses: int
    frozen_seconds: float
    cache_records: int = 0  # the cache's capacity (0: no cache)

    @property
    def hit_rate(self) -> float:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else 0.0


class Model:
    """`method` (`s2rt.methods`) chooses the head; loading adapters adopts the file's method."""

    def __init__(self, bundle: Bundle, backend: str = "auto", threads: int = 1, method: str = DEFAULT_METHOD) -> None:
        self.bundle = bundle
        self.frozen = FrozenModel(bundle, open_backend(bundle, backend, threads))
        self.method = get_method(method)
        self.head: TrainableHead = self.method.make_head(bundle)
        self._merged: tuple[TrainableHead, bytes, np.ndarray] | None = None  # see _merged_weight

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        backend: str = "auto",
        threads: int = 1,
        adapters: str | os.PathLike[str] | None = None,
        trusted_keys: TrustedKeys | None = None,
        method: str | None = None,
    ) -> Model:
        """Read the bundle (with `trusted_keys`, only if one of them signed it: `s2rt.trust`) and its backend.

        `method` None: skip2lora, or the method of `adapters` when given; otherwise
        `adapters` must be of `method`'s family.
        """
        model = cls(open_trusted(path, trusted_keys), backend, threads, method or DEFAULT_METHOD)
        if adapters is not None:
            model.load_adapters(adapters, method)
        return model

    # -- adapters --------------------------------------------------------------------
    def load_adapters(self, path: str | os.PathLike[str], method: str | None = None) -> dict[str, Any]:
        """Load a state file; the model takes on its method. With `method`, refuse a file of another method family."""
        arrays, meta = load_state(path, self.bundle, method)
        stored = get_method(meta["method"])
        head = self.head if stored.family == self.method.family else stored.make_head(self.bundle)
        try:
            head.load_state_dict(arrays)
        except StateError as e:
            raise StateError(f"{path}: {e}") from None
        self.method = stored if stored.family != self.method.family else self.method
        self.head = head
        return meta

    def save_adapters(self, path: str | os.PathLike[str], **meta: Any) -> None:
        save_state(path, self.head.state_dict(), self.bundle, self.method.name, **meta)

    def reset_adapters(self) -> None:
        self.head = self.method.make_head(self.bundle)

    # -- inference -------------------------------------------------------------------
    def logits(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Tuned logits: frozen logits plus the head's correction."""
        if 0 < len(x) <= batch_size:
            return self._logits(x)
        out = [self._logits(x[start : start + batch_size]) for start in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.empty((0, self.bundle.head.num_outputs), np.float32)

    def _logits(self, x: np.ndarray) -> np.ndarray:
        taps, frozen_logits = self.frozen.run(x)
        merged = self._merged_weight()
        if merged is None:
            return predict_logits(self.head, taps, frozen_logits)
        z = np.dot(taps, merged)
        z += frozen_logits
        return z

    def _merged_weight(self) -> np.ndarray | None:
        """The Skip2-LoRA head folded into one D x C matrix (one GEMM per prediction instead of
        2L + 1), rebuilt whenever the head or its weights are not those it was made from."""
        merge = getattr(self.head, "merged_weight", None)
        if merge is None:
            return None
        theta = self.head.parameters()["theta"]
        made = self._merged
        if made is None or made[0] is not self.head or made[1] != theta.tobytes():
            made = self._merged = (self.head, theta.tobytes(), merge())
        return made[2]

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class index, class probabilities) per sample."""
        z = self.logits(x)
        if self.bundle.head.loss != Loss.SOFTMAX_CROSS_ENTROPY:
            return np.zeros(len(z), dtype=np.int64), z
        return z.argmax(axis=1), softmax(z)

    def evaluate(self, samples: Samples) -> dict[str, float | int]:
        if samples.y is None:
            raise ValueError("evaluation needs labelled samples")
        predicted, _ = self.predict(samples.x)
        return {"accuracy": float(np.mean(predicted == samples.y)), "n": len(samples.y)}

    # -- training --------------------------------------------------------------------
    def fine_tune(
        self,
        samples: Samples,
        config: TrainConfig,
        *,
        use_cache: bool = True,
        cache_path: str | os.PathLike[str] | None = None,
        cache_capacity: int | None = None,
        max_cache_mb: float | None = None,
        progress: ProgressCallback | None = None,
        method: str | None = None,
    ) -> FineTuneResult:
        """Train the adapters on labelled samples; the frozen forward runs once per sample with the cache on.

        The cache holds every sample, or at most `cache_capacity` records, or at most what
        fits in `max_cache_mb` MiB (header and checksums included), whichever is least;
        the samples it cannot hold run the frozen forward every epoch.

        `method` (default: the model's) switches to another fine-tuning method; one of
        another family starts from that method's fresh head. skiplora never uses the cache.
        """
        if samples.y is None:
            raise ValueError("fine-tuning needs labelled samples")
        if method is not None:
            chosen = get_method(method)
            if chosen.family != self.method.family:
                self.head = chosen.make_head(self.bundle)
            self.method = chosen
        cache = None
        if use_cache and self.method.uses_cache:
            capacity = budgeted_capacity(self.bundle, cache_capacity or len(samples.x), max_cache_mb)
            cache = SkipCache(self.bundle.cache, capacity, Path(cache_path) if cache_path else None, self.bundle.digest)
        start = time.perf_counter()
        source = CachedFeatures(self.frozen, samples.x, samples.y, cache)
        report = train(self.head, source, samples.y, config, progress=progress)
        seconds = time.perf_counter() - start
        if cache is not None:
            cache.close()
        records = cache.capacity if cache is not None else 0
        return FineTuneResult(report, seconds, source.hits, source.misses, source.frozen_seconds, records)

    def learn(self, x: np.ndarray, y: np.ndarray) -> None:
        """Learn labelled samples at once, one exact step (an oselm head after `fine_tune`: recursive least squares)."""
        learn = getattr(self.head, "learn", None)
        if learn is None:
            raise RuntimeInputError(f"{self.method.name} cannot learn sample by sample; fine-tune with method='oselm' first")
        taps, frozen_logits = self.frozen.run(x)
        learn(taps, frozen_logits, np.asarray(y))


def budgeted_capacity(bundle: Bundle, records: int, max_cache_mb: float | None) -> int:
    """`records`, or fewer if that many do not fit in `max_cache_mb` MiB."""
    if max_cache_mb is None:
        return records
    if isinstance(max_cache_mb, bool) or not isinstance(max_cache_mb, (int, float)) or not 0 < max_cache_mb < math.inf:
        raise RuntimeInputError(f"max_cache_mb: expected a number of MiB > 0, got {max_cache_mb!r}")
    budget = int(max_cache_mb * MIB)
    fit = records_within(bundle.cache, budget)
    if fit < 1:
        raise RuntimeInputError(
            f"max_cache_mb={max_cache_mb:g} ({budget:,} bytes) holds no cache record: one takes "
            f"{bundle.cache.record_size + CHECK_BYTES:,} bytes after {records_offset(bundle.cache):,} bytes of header; "
            "raise the budget or train without the cache"
        )
    return min(records, fit)


def new_head(bundle: Bundle) -> AdapterHead:
    """The bundle's initial Skip2-LoRA head."""
    return skip2lora_head(bundle)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
