"""`POST /v1/fleet/statistics`: this device's ridge sums for the fleet's closed-form round.

The sums (`s2rt.heads.sums`: G = X^T X, X^T T, tr(T^T T), n) of the served bundle's stored
samples, read from the Skip-Cache (a sample not yet cached runs the frozen segment once
and is cached). Two parts: the samples jobs train on, and the held-out ones
(`gate.held_out`, VAL_FRACTION) the accuracy gate judges on. The fleet server fits on the
first and chooses lambda by the fit's error on the second, so the gate still judges the
solved version on samples it was not fitted to. No sample leaves the device; the sums
do, and with few samples they reveal much of them (see `s2fleet.ridge`).

The reply is an .npz (no pickle): `gram` (G's upper triangle), `cross`, `targets`,
`examples`, and the same four with the prefix `held_out.`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from s2rt.features import CachedFeatures
from s2rt.heads.sums import RidgeSums, check_width, ridge_sums
from s2rt.serve.errors import ApiError, conflict
from s2rt.serve.fleet import check_fleet_allowed
from s2rt.serve.gate import VAL_FRACTION, held_out
from s2rt.serve.samples import SampleSet

if TYPE_CHECKING:
    from s2rt.serve.service import Deployment, Service

HELD_OUT = "held_out."


def statistics(service: Service, kappa: float) -> bytes:
    """The .npz of this device's training and held-out ridge sums for the served bundle."""
    check_fleet_allowed(service, "computing ridge statistics for a fleet")
    deployment = service.serving.deployment
    bundle = deployment.bundle
    if not deployment.classify:
        raise conflict("this bundle's head is a regression (MSE) head; the daemon collects class-labelled samples only")
    try:
        check_width(sum(t.size for t in bundle.taps))
    except ValueError as e:
        raise ApiError(409, "too_large", str(e)) from None
    with service.jobs.exclusive("computing ridge statistics"):  # one writer of the Skip-Cache at a time
        stored = service.samples.load(deployment.signature, bundle.input.shape, bundle.input.dtype.numpy)
        keep = stored.y < len(bundle.labels)  # classes this device added (--allow-new-classes) stay on the device
        stored = SampleSet(stored.ids[keep], stored.x[keep], stored.y[keep])
        val = held_out(stored.x, VAL_FRACTION)
        if not (~val).any():
            raise conflict(f"{len(stored.y)} labelled samples stored, {int(val.sum())} of them held out: nothing to sum", "samples")
        parts = {
            "": _sums(deployment, stored.x[~val], stored.y[~val], kappa),
            HELD_OUT: _sums(deployment, stored.x[val], stored.y[val], kappa),
        }
        deployment.cache.flush()
    arrays: dict[str, np.ndarray] = {}
    for prefix, s in parts.items():
        arrays |= {f"{prefix}gram": s.gram, f"{prefix}cross": s.cross}
        arrays |= {f"{prefix}targets": np.float64(s.targets), f"{prefix}examples": np.int64(s.examples)}  # type: ignore[dict-item]
    out = io.BytesIO()
    np.savez(out, **arrays)  # type: ignore[arg-type]  # numpy stubs mistake **arrays for allow_pickle
    return out.getvalue()


def _sums(deployment: Deployment, x: np.ndarray, y: np.ndarray, kappa: float) -> RidgeSums:
    bundle = deployment.bundle
    features = CachedFeatures(deployment.frozen, x, y, deployment.cache)

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for start in range(0, len(y), features.prefetch_rows):
            idx = np.arange(start, min(start + features.prefetch_rows, len(y)))
            taps, frozen = features.features(idx)
            yield taps, frozen, y[idx]

    width = sum(t.size for t in bundle.taps)
    return ridge_sums(chunks(), width, bundle.head.num_outputs, kappa, regression=False)
