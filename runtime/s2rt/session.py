"""The runtime's library API (`from s2rt import Model`): one bundle, one backend, one adapter head.

    model = Model.open("bundle.s2l")
    model.fine_tune(model.samples(x, y))            # the bundle's defaults, as `s2rt train` uses them
    model.fine_tune(model.samples(x, y), epochs=5)  # ... with some of them overridden
    model.predict(x)          # the label of each sample (sklearn's habit)
    model.predict_proba(x)    # class probabilities, one column per label
    model.save_adapters("adapters.npz")

`classify(x)` gives class indices and probabilities together (the CLI's `predict`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2rt.backend import open_backend, predict_graph
from s2rt.backend.predict_graph import CLASSES, LOGITS, PROBABILITIES, PredictGraph
from s2rt.bundle import Bundle, Loss
from s2rt.bundle.foreign import refuse_foreign
from s2rt.cache import CHECK_BYTES, SkipCache, records_offset, records_within
from s2rt.data import Samples, check_samples
from s2rt.errors import RuntimeInputError, StateError
from s2rt.features import CachedFeatures
from s2rt.folded import AFFINE_METHODS, FoldedHead
from s2rt.frozen import FrozenModel
from s2rt.head import AdapterHead
from s2rt.heads.grown import GrownHead, check_new_labels, grow, pad_logits
from s2rt.heads.grown_train import train_grown
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
        self.new_labels: tuple[str, ...] = ()  # classes learned on the device (`add_classes`), after the bundle's
        self._folded = FoldedHead()
        self._graph: PredictGraph | None = None  # made on the first prediction (see _predict_graph)
        self._use_graph = predict_graph.enabled()

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
        refuse_foreign(path)
        model = cls(open_trusted(path, trusted_keys), backend, threads, method or DEFAULT_METHOD)
        if adapters is not None:
            model.load_adapters(adapters, method)
        return model

    # -- adapters --------------------------------------------------------------------
    def load_adapters(self, path: str | os.PathLike[str], method: str | None = None) -> dict[str, Any]:
        """Load a state file; the model takes on its method. With `method`, refuse a file of another method family."""
        arrays, meta = load_state(path, self.bundle, method)
        stored = get_method(meta["method"])
        new_labels = () if "new_labels" not in meta else check_new_labels(meta["new_labels"], self.bundle.labels, f"{path}: new_labels")
        head = self.head if stored.family == self.method.family and not self.new_labels else stored.make_head(self.bundle)
        if new_labels:
            head = self._grown(stored.name, head, len(new_labels))
        try:
            head.load_state_dict(arrays)
        except StateError as e:
            raise StateError(f"{path}: {e}") from None
        self.method = stored if stored.family != self.method.family else self.method
        self.head, self.new_labels = head, new_labels
        return meta

    def save_adapters(self, path: str | os.PathLike[str], **meta: Any) -> None:
        if self.new_labels:
            meta["new_labels"] = list(self.new_labels)
        save_state(path, self.head.state_dict(), self.bundle, self.method.name, **meta)

    def reset_adapters(self) -> None:
        """The bundle's initial head of the model's method; forgets classes added on the device."""
        self.head = self.method.make_head(self.bundle)
        self.new_labels = ()

    # -- new classes (s2rt.heads.grown) ------------------------------------------------
    def add_classes(self, names: Any) -> None:
        """Add classes the bundle does not have, after `labels`: the head grows a row per class
        (a skip2lora head; its trained adapters carry over), in sorted order; known names are skipped."""
        known = set(self.labels)
        added = tuple(sorted({str(n) for n in names} - known))
        if not added:
            return
        labels = check_new_labels([*self.new_labels, *added], self.bundle.labels, "new classes", RuntimeInputError)
        self.head = self._grown(self.method.name, self.head, len(labels))
        self.new_labels = labels
        self._folded = FoldedHead()

    def _grown(self, method: str, head: TrainableHead, extra: int) -> GrownHead:
        if not self.classifies:
            raise RuntimeInputError("new classes need a classifier; this bundle's head is a regression (loss mse)")
        if get_method(method).family != "skip2lora" or not isinstance(head, (AdapterHead, GrownHead)):
            raise RuntimeInputError(f"new classes need --method skip2lora (a head that grows a row per class), not {method}")
        return grow(head, self.bundle.head.num_outputs, extra)

    # -- inference -------------------------------------------------------------------
    # With the onnx backend and an affine head, a batch is one onnxruntime call: the
    # predict graph (s2rt.backend.predict_graph) with the head folded to (W, b) as inputs.
    # Otherwise the frozen segment runs and the head is applied in NumPy.
    def logits(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Tuned logits: frozen logits plus the head's correction."""
        return self._batched(x, batch_size, lambda chunk: self._run(chunk, classes=False)[1])

    def classify(self, x: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(class index, class probabilities) per sample; for a regression head (zeros, outputs)."""
        x = self.frozen.check_input(x)
        if 0 < len(x) <= batch_size:
            return self._run(x, classes=True)
        parts = [self._run(x[start : start + batch_size], classes=True) for start in range(0, len(x), batch_size)]
        if not parts:
            return np.zeros(0, np.int64), np.empty((0, len(self.labels)), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _batched(self, x: np.ndarray, batch_size: int, run: Any) -> np.ndarray:
        x = self.frozen.check_input(x)
        if 0 < len(x) <= batch_size:
            return run(x)
        out = [run(x[start : start + batch_size]) for start in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.empty((0, len(self.labels)), np.float32)

    def _run(self, x: np.ndarray, classes: bool) -> tuple[np.ndarray, np.ndarray]:
        """(classes, probabilities) with `classes`, else (empty, logits), for a checked batch."""
        classify = classes and self.bundle.head.loss == Loss.SOFTMAX_CROSS_ENTROPY
        graph = self._predict_graph()
        if graph is not None:
            weight, bias = self._folded(self.head)
            if classify:
                labels, probs = graph.run(x, weight, bias, (CLASSES, PROBABILITIES))
                return labels, probs
            (z,) = graph.run(x, weight, bias, (LOGITS,))
        else:
            taps, frozen_logits = self.frozen.run_checked(x)
            if self.new_labels:
                z = predict_logits(self.head, taps, pad_logits(frozen_logits, len(self.labels)))
            elif self.method.name in AFFINE_METHODS:
                weight, bias = self._folded(self.head)
                z = np.dot(taps, weight)
                z += frozen_logits
                z += bias
            else:
                z = predict_logits(self.head, taps, frozen_logits)
            if classify:
                return z.argmax(axis=1), softmax(z)
        return np.zeros(len(z), dtype=np.int64), z

    def _predict_graph(self) -> PredictGraph | None:
        if not self._use_graph or self.new_labels or self.frozen.backend.name != "onnx" or self.method.name not in AFFINE_METHODS:
            return None
        if self._graph is None:
            self._graph = PredictGraph(self.bundle, self.frozen.segment, self.frozen.backend.threads)
        return self._graph

    @property
    def labels(self) -> tuple[str, ...]:
        """The class labels, in the order of `predict_proba`'s columns: the bundle's, then `new_labels`."""
        return self.bundle.labels + self.new_labels

    @property
    def classifies(self) -> bool:
        return self.bundle.head.loss == Loss.SOFTMAX_CROSS_ENTROPY

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The label of each sample (from `labels`); a regression head's outputs, N x C."""
        classes, outputs = self.classify(x, batch_size)
        return np.asarray(self.labels)[classes] if self.classifies else outputs

    def predict_proba(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities, N x C, columns in the order of `labels`."""
        if not self.classifies:
            raise RuntimeInputError("predict_proba: this bundle's head is a regression (loss mse); use predict")
        return self.classify(x, batch_size)[1]

    def evaluate(self, samples: Samples) -> dict[str, Any]:
        if samples.y is None:
            raise ValueError("evaluation needs labelled samples")
        predicted, _ = self.classify(samples.x)
        result: dict[str, Any] = {"accuracy": float(np.mean(predicted == samples.y)), "n": len(samples.y)}
        if self.new_labels:  # old and new classes apart: adding a class must not cost the old ones
            old = samples.y < self.bundle.head.num_outputs
            result["old_class_accuracy"] = float(np.mean(predicted[old] == samples.y[old])) if old.any() else None
            result["new_class_recall"] = {
                label: float(np.mean(predicted[samples.y == c] == c)) if (samples.y == c).any() else None
                for c, label in enumerate(self.labels)
                if c >= self.bundle.head.num_outputs
            }
        return result

    def samples(self, x: Any, y: Any = None, *, allow_new_classes: bool = False) -> Samples:
        """`x` (N x input shape, or N flat rows) and labels `y` checked against the bundle as
        `s2rt` checks a data file; `y` holds class indices or label names. With
        `allow_new_classes`, names the model does not know become new classes (`add_classes`)."""
        if y is not None and np.asarray(y).dtype.kind in "US":
            y = self.label_indices(np.asarray(y), allow_new_classes=allow_new_classes)
        return check_samples(x, y, self.bundle.input, len(self.labels))

    def label_indices(self, y: np.ndarray, *, allow_new_classes: bool = False) -> np.ndarray:
        """Class indices of label names; unknown names are refused, or added as classes with `allow_new_classes`."""
        names = [str(v) for v in np.asarray(y).reshape(-1)]
        unknown = sorted(set(names) - set(self.labels))
        if unknown and allow_new_classes:
            self.add_classes(unknown)
        elif unknown:
            raise RuntimeInputError(
                f"labels {unknown[:5]} are not among the bundle's labels{' or the added classes' if self.new_labels else ''} "
                f"{list(self.labels)[:20]}; "
                "to learn them as new classes pass --allow-new-classes (s2rt train) or allow_new_classes=True (Model.samples)"
            )
        index = {label: i for i, label in enumerate(self.labels)}
        return np.array([index[n] for n in names], dtype=np.int64)

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The bundle's default optimizer, learning rate, epochs and batch size, and its loss,
        with `overrides` (`TrainConfig` fields; None keeps the default) on top."""
        d = self.bundle.head.defaults
        fields: dict[str, Any] = {
            "epochs": d.epochs,
            "batch_size": d.batch_size,
            "learning_rate": d.learning_rate,
            "optimizer": d.optimizer,
            "loss": self.bundle.head.loss,
        }
        fields.update({name: value for name, value in overrides.items() if value is not None})
        return TrainConfig(**fields)

    # -- training --------------------------------------------------------------------
    def fine_tune(
        self,
        samples: Samples,
        config: TrainConfig | None = None,
        *,
        use_cache: bool = True,
        cache_path: str | os.PathLike[str] | None = None,
        cache_capacity: int | None = None,
        max_cache_mb: float | None = None,
        progress: ProgressCallback | None = None,
        method: str | None = None,
        **overrides: Any,
    ) -> FineTuneResult:
        """Train the adapters on labelled samples; the frozen forward runs once per sample with the cache on.

        `config` None: `train_config(**overrides)`, the bundle's defaults with `overrides`
        (epochs=5, learning_rate=0.05, …) on top.

        The cache holds every sample, or at most `cache_capacity` records, or at most what
        fits in `max_cache_mb` MiB (header and checksums included), whichever is least;
        the samples it cannot hold run the frozen forward every epoch.

        `method` (default: the model's) switches to another fine-tuning method; one of
        another family starts from that method's fresh head. skiplora never uses the cache.
        """
        if samples.y is None:
            raise ValueError("fine-tuning needs labelled samples")
        if config is None:
            config = self.train_config(**overrides)
        elif overrides:
            raise TypeError(f"fine_tune: give a config or overrides ({', '.join(overrides)}), not both")
        if method is not None:
            chosen = get_method(method)
            if self.new_labels and chosen.family != "skip2lora":
                raise RuntimeInputError(f"new classes {list(self.new_labels)} need --method skip2lora, not {chosen.name}")
            if chosen.family != self.method.family:
                self.head = chosen.make_head(self.bundle)
            self.method = chosen
        cache = None
        if use_cache and self.method.uses_cache:
            capacity = budgeted_capacity(self.bundle, cache_capacity or len(samples.x), max_cache_mb)
            cache = SkipCache(self.bundle.cache, capacity, Path(cache_path) if cache_path else None, self.bundle.digest)
        start = time.perf_counter()
        decode_bytes = None if max_cache_mb is None else int(max_cache_mb * MIB)  # the budget bounds the decoded chunks too
        source = CachedFeatures(self.frozen, samples.x, samples.y, cache, max_bytes=decode_bytes)
        if isinstance(self.head, GrownHead):  # old classes first, then the new ones with the old pinned
            report = train_grown(self.head, source, samples.y, config, progress=progress)
        else:
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
