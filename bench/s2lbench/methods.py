"""What every fine-tuning method is given (a Job) and returns (a RunResult), and the registry.

Every method gets the same samples, epochs, batch size and per-epoch sample order (the
order s2rt's trainer draws: `np.random.default_rng(seed).permutation(n)` once per epoch),
and its own learning rate, picked from its grid on a validation split. The timed region
is the fine-tuning call alone: models are built and weights loaded before it starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from s2lbench.profiles import Profile
from s2lbench.workloads import Data, Workload

# Learning-rate grids (Adam everywhere): full fine-tuning wants smaller steps than adapters.
# They are where the search starts: `suite.tune` widens a grid while its best rate is at an edge.
FT_GRID = (1e-4, 3e-4, 1e-3, 3e-3)
ADAPTER_GRID = (1e-3, 3e-3, 1e-2, 3e-2)
CLOSED_FORM = ()  # no learning rate (oselm): nothing to tune
NO_LR = 0.01  # what a closed-form method is handed as its (unused) rate


@dataclass(frozen=True)
class Job:
    workload: Workload
    train: Data
    eval: Data
    epochs: int
    batch_size: int
    lr: float
    seed: int
    profile: Profile
    schedule: str = "constant"  # or "cosine": the learning rate decays per epoch to 0 (the longer budget)


@dataclass
class RunResult:
    seconds: float  # wall time of the fine-tuning call
    accuracy: float  # on job.eval
    loss: float  # mean cross-entropy on job.eval
    trainable: int  # trainable parameters
    phases: dict[str, float] = field(default_factory=dict)  # s2rt: frozen forward, head forward, backward, update
    hit_rate: float | None = None  # s2rt with the Skip-Cache
    note: str = ""
    calibrated_loss: float = math.nan  # mean cross-entropy on job.eval at its best temperature (calibrated_cross_entropy)


Runner = Callable[[Job, Any], RunResult]


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    family: str  # s2rt | torch | peft | ortt
    lr_grid: tuple[float, ...]
    runner: Runner
    tune_as: str | None = None  # a method with the same math: reuse its learning rate instead of a grid search
    kinds: tuple[str, ...] | None = None  # the workload kinds it runs on ("cnn", "mlp"); None: every kind

    def run(self, job: Job, context: Any) -> RunResult:
        return self.runner(job, context)


def epoch_orders(n: int, epochs: int, seed: int) -> list[np.ndarray]:
    """The sample order of every epoch, exactly as s2rt's trainer draws it (no validation split)."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    return [rng.permutation(idx) for _ in range(epochs)]


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


# Temperatures tried by calibrated_cross_entropy: 0.05 to 20 on a log grid (T = 1 included).
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))


def calibrated_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """The lowest mean cross-entropy of logits / T over TEMPERATURES.

    Plain cross-entropy also charges a model for being over- or under-confident, which
    grows with the learning rate and the epochs even where the ranking of the classes (what
    accuracy counts) does not get worse; at its best temperature only the ranking is scored,
    still as a smooth figure rather than a count of right answers.
    """
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    rows = np.arange(len(y))
    best = np.inf
    for t in TEMPERATURES:
        zt = z / t
        best = min(best, float(np.mean(np.log(np.exp(zt).sum(axis=1)) - zt[rows, y])))
    return best


def score(logits: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(accuracy, mean cross-entropy, mean cross-entropy at the best temperature)."""
    return float(np.mean(logits.argmax(axis=1) == y)), cross_entropy(logits, y), calibrated_cross_entropy(logits, y)


def registry() -> dict[str, Method]:
    """Every method, in table order; families whose packages are missing are left out with a note."""
    from s2lbench import methods_ortt, methods_peers, methods_s2rt, methods_torch

    out: dict[str, Method] = {}
    for family in (methods_s2rt, methods_torch, methods_peers, methods_ortt):
        for method in family.methods():
            out[method.name] = method
    return out
