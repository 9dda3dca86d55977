"""What a device does in a round: start from the global adapters, train on its own samples.

The frozen forward of each sample runs once per device (the Skip-Cache, a file beside the
device's other state), every round after the first trains from the cache alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from s2rt.bundle.model import Optimizer
from s2rt.data import Samples
from s2rt.session import Model
from s2rt.trainer import TrainConfig

from s2fleet.aggregate import Adapters, Update


def local_update(
    model: Model,
    samples: Samples,
    global_adapters: Adapters,
    epochs: int,
    learning_rate: float | None = None,
    seed: int = 0,
    cache_path: str | os.PathLike[str] | None = None,
    optimizer: str | None = None,
    logit_adjustment: float = 0.0,
    batch_size: int | None = None,
) -> Update:
    """Train the bundle's Skip2-LoRA head from `global_adapters` on `samples`; its adapters and example count."""
    head = model.head
    head.load_per_tap(global_adapters)  # type: ignore[attr-defined]
    defaults = model.bundle.head.defaults
    config = TrainConfig(
        epochs=epochs,
        batch_size=min(batch_size or defaults.batch_size, len(samples.x)),
        learning_rate=learning_rate if learning_rate is not None else defaults.learning_rate,
        optimizer=Optimizer[optimizer.upper()] if optimizer else defaults.optimizer,
        loss=model.bundle.head.loss,
        seed=seed,
        logit_adjustment=logit_adjustment,
    )
    model.fine_tune(samples, config, cache_path=Path(cache_path) if cache_path else None)
    return Update(model.head.per_tap(), len(samples.x))  # type: ignore[attr-defined]


def global_accuracy(model: Model, adapters: Adapters, x: np.ndarray, y: np.ndarray) -> float:
    model.head.load_per_tap(adapters)  # type: ignore[attr-defined]
    predicted, _ = model.classify(x)
    return float(np.mean(predicted == y))
