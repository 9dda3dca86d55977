"""Which new adapters may go live: a held-out split fixed by sample content, and the accuracy check.

The split depends only on each sample's bytes (its content hash), so every job and every
adapter version is judged on the same held-out samples, and a duplicate never sits on
both sides. The check runs at the moment of the swap, against the version active then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from s2rt.cache import sample_keys
from s2rt.features import CachedFeatures
from s2rt.heads.grown import PaddedFeatures
from s2rt.heads.grown_train import RowSubset
from s2rt.methods import TrainableHead
from s2rt.trainer import evaluate

if TYPE_CHECKING:
    from s2rt.serve.samples import SampleStore
    from s2rt.serve.service import Deployment, Serving

VAL_FRACTION = 0.2  # the jobs' default split: versions from jobs, fleet imports and online snapshots are judged alike


def held_out(x: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the held-out samples (about `fraction` of them)."""
    if not len(x) or not fraction:
        return np.zeros(len(x), bool)
    h = sample_keys(x)[:, :8].copy().view("<u8").reshape(-1)
    return h < np.uint64(min(fraction, 1.0) * float(2**64 - 1))


@dataclass(frozen=True)
class AccuracyGate:
    head: TrainableHead  # the new adapters (any method)
    val: CachedFeatures | None  # the held-out samples' features
    y_val: np.ndarray
    n_train: int
    batch_size: int
    check: bool  # False: accept without comparing

    def accuracy(self, head: TrainableHead) -> float:
        """Held-out accuracy; a sample of a class the head does not have (one learned since) counts as wrong."""
        assert self.val is not None
        known = np.flatnonzero(self.y_val < head.num_outputs)
        if not len(known):
            return 0.0
        source = RowSubset(PaddedFeatures(self.val, head.num_outputs), known)
        accuracy = evaluate(head, source, self.y_val[known], self.batch_size)["accuracy"]
        return float(accuracy) * len(known) / len(self.y_val)

    def __call__(self, current: Serving) -> dict[str, Any]:
        """The verdict on the new adapters against `current`: accepted, reason, and the figures behind it."""
        n_val = len(self.y_val)
        new = self.accuracy(self.head) if self.val is not None else None
        verdict: dict[str, Any] = {
            "val_accuracy": new,
            "active_version": current.version,
            "metrics": {"val_accuracy": new, "n_train": self.n_train, "n_val": n_val},
        }
        if not self.check:
            return verdict | {"accepted": True, "reason": "activated without the accuracy check (check_accuracy is false)"}
        if new is None:
            return verdict | {"accepted": False, "reason": "no held-out samples to check the new adapters on; ingest more samples"}
        active = self.accuracy(current.head)
        verdict["active_val_accuracy"] = active
        if new < active:
            reason = (
                f"held-out accuracy {new:.4f} is below the active version {current.version}'s {active:.4f} "
                f"on the same {n_val} samples; version {current.version} stays active"
            )
            return verdict | {"accepted": False, "reason": reason}
        return verdict | {"accepted": True, "reason": f"held-out accuracy {new:.4f} >= {active:.4f} of version {current.version}"}


def stored_gate(samples: SampleStore, deployment: Deployment, head: TrainableHead, fraction: float = VAL_FRACTION) -> AccuracyGate:
    """The gate for `head`, a version made outside a job, on the held-out part of every stored sample of the bundle."""
    bundle = deployment.bundle
    stored = samples.load(deployment.signature, bundle.input.shape, bundle.input.dtype.numpy)
    val = held_out(stored.x, fraction)
    features = CachedFeatures(deployment.frozen, stored.x[val], stored.y[val], deployment.cache) if val.any() else None
    return AccuracyGate(head, features, stored.y[val], 0, bundle.head.defaults.batch_size, True)
