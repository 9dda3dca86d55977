"""`s2rt serve --online`: the served head is an OS-ELM head that learns every labelled sample at once.

    warm-up   the first `warmup` learnable samples of the bundle's signature (in id order)
              are fitted in closed form (`OSELMHead.fit`: standardization, kappa and
              lambda picked on a held-out fifth of them, ridge solve);
    online    every later learnable sample is one recursive-least-squares step
              (`OSELMHead.learn`) before its POST /v1/samples is answered, and the
              served head is replaced by a copy of the new one (one reference swap).

    re-pick   when 2, 4, 8, ... times `warmup` samples have been learned, kappa and lambda
              are picked again (`OSELMHead.select`) on the held-out samples seen so far,
              and beta re-solved exactly from the kept sums Phi^T Phi, Phi^T Y0, Phi^T F.

A sample is learnable unless it falls in the gate's held-out split (`gate.held_out`,
fixed by content): those judge snapshots and are never learned, as in jobs; they also
pick kappa and lambda at the re-picks (a dozen warm-up samples pick them badly).

The standardization is fixed by the warm-up fit: RLS is exact only for a fixed feature
map, and re-standardizing would change the features of every past row, a refit from all
raw rows rather than an O(dim^2) step (kappa and lambda do not change the features, so
a re-pick is one solve from the sums). So after n learnable samples the served beta is,
up to rounding, the batch ridge solution over those n rows with the warm-up's
standardization and the current kappa and lambda (`tests/serve/test_online.py` checks
this). The bundle carries no tap statistics of the field data, and the pretraining
domain's would be the wrong ones under drift; the warm-up samples are field data.

Everything is computed from the stored samples in id order, one sample at a time (the
frozen forward too, so batch composition cannot change a bit), and the re-picks happen at
fixed counts, which makes the learner a deterministic function of the sample sequence. Crash safety follows: a snapshot that the
accuracy gate accepts is committed as an adapter version, with its exact RLS state (P and
beta in float64) beside it in DIR/online/<bundle digest[:16]>/; a restart restores the
latest such state and learns the samples stored after it, or, with none, replays every
stored sample from the warm-up. Either way it reaches the state it had before the stop.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from s2rt.atomic import atomic_write_bytes
from s2rt.errors import StateError
from s2rt.heads.oselm import MIN_SAMPLES, OSELMHead
from s2rt.heads.rls import RecursiveRidge
from s2rt.methods import get_method
from s2rt.npz import read_npz
from s2rt.serve.gate import held_out
from s2rt.state import HeadState
from s2rt.trainer import TrainConfig

if TYPE_CHECKING:
    from s2rt.serve.samples import SampleStore
    from s2rt.serve.service import Deployment

log = logging.getLogger(__name__)

ONLINE_METHODS = ("oselm", "oselm-rf")
RLS_FORMAT = 2  # 2: the kept sums for the re-picks
SUMS = ("gram", "cross_y", "cross_f")


@dataclass(frozen=True)
class OnlineOptions:
    method: str = "oselm"  # oselm or oselm-rf
    warmup: int = 64  # learnable samples fitted in closed form before learning goes sample by sample
    holdout: float = 0.2  # share of samples (by content) that judge snapshots and pick kappa, lambda; never learned
    snapshot_every: int = 256  # learned samples between scheduled snapshots (0: none by count)
    snapshot_seconds: float = 0.0  # seconds between scheduled snapshots when samples were learned (0: none by time)

    def __post_init__(self) -> None:
        if self.method not in ONLINE_METHODS:
            raise ValueError(f"--online: expected one of {', '.join(ONLINE_METHODS)}, got {self.method!r}")
        if self.warmup < MIN_SAMPLES:
            raise ValueError(f"--online-warmup: expected at least {MIN_SAMPLES} samples, got {self.warmup}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"--online-holdout: expected a share in [0, 1), got {self.holdout}")

    def describe(self) -> dict[str, Any]:
        """What the learned state depends on besides the samples: a saved state made otherwise is not resumed."""
        return {"method": self.method, "warmup": self.warmup, "holdout": self.holdout}


@dataclass(frozen=True)
class Candidate:
    """A copy of the learner at one moment: the head to commit and the RLS state to keep beside it."""

    state: HeadState
    head: OSELMHead
    rls: dict[str, np.ndarray]
    sums: dict[str, np.ndarray]
    through: int  # the last sample id considered
    learned: int


class OnlineLearner:
    """The RLS state of one deployment. Callers hold `lock` around storing samples and `catch_up`,
    so samples are learned in id order."""

    def __init__(self, deployment: Deployment, samples: SampleStore, state_dir: Path, options: OnlineOptions) -> None:
        self.deployment, self.samples, self.options = deployment, samples, options
        self.dir = state_dir / "online" / deployment.bundle.digest[:16]
        self.lock = threading.Lock()
        self.head: OSELMHead | None = None  # None until the warm-up fit
        self.through = 0
        self.learned = 0
        self.since_snapshot = 0
        self.last_snapshot = time.monotonic()
        self._warmup: list[tuple[np.ndarray, np.ndarray, int]] = []  # (X row, F row, label) until the fit
        self._judges: list[tuple[np.ndarray, np.ndarray, int]] = []  # the held-out samples seen: they pick kappa, lambda
        self._sums: dict[str, np.ndarray] = {}  # Phi^T Phi, Phi^T Y0, Phi^T F of the learned rows, from the fit on
        started = time.perf_counter()
        with self.lock:
            self._resume()
            replayed = self.catch_up()
        log.info(
            "online learner ready: %d samples learned (%d replayed from the stored samples) in %.2f s",
            self.learned,
            replayed,
            time.perf_counter() - started,
            extra={"event": "online_ready", "learned": self.learned, "replayed": replayed},
        )

    # -- learning -------------------------------------------------------------------------
    def catch_up(self) -> int:
        """Learn every stored sample after `through`, in id order; returns how many were learned (caller holds `lock`)."""
        d = self.deployment
        new = self.samples.load(d.signature, d.bundle.input.shape, d.bundle.input.dtype.numpy, after_id=self.through)
        if not len(new.ids):
            return 0
        judges = held_out(new.x, self.options.holdout)
        classes = len(d.bundle.labels)
        learned = 0
        for i, sample_id in enumerate(new.ids):
            if new.y[i] >= classes:  # a class learned on the device (--allow-new-classes): the online head does not grow
                self.through = int(sample_id)
                continue
            X, F = self.deployment.frozen.run(new.x[i : i + 1])  # one sample at a time: the same bits whatever the batch
            if judges[i]:
                self._judges.append((X[0], F[0], int(new.y[i])))
            else:
                self._learn(X, F, int(new.y[i]))
                learned += 1
            self.through = int(sample_id)  # per sample: a failure part-way never learns a sample twice
        return learned

    def _learn(self, X: np.ndarray, F: np.ndarray, label: int) -> None:
        self.learned += 1
        self.since_snapshot += 1
        if self.head is None:
            self._warmup.append((X[0], F[0], label))
            if len(self._warmup) == self.options.warmup:
                self.head = self._fit()
                self._warmup = []
            return
        self.head.learn(X, F, np.array([label]))
        self._accumulate(self.head, X, F, np.array([label]))
        rounds, rest = divmod(self.learned, self.options.warmup)
        if self._judges and not rest and rounds >= 2 and rounds & (rounds - 1) == 0:  # at 2, 4, 8, ... x warmup
            self._repick()

    def _accumulate(self, head: OSELMHead, X: np.ndarray, F: np.ndarray, y: np.ndarray) -> None:
        phi = head.phi(head.split_taps(X)[0]).astype(np.float64)
        y0 = head.residual_target(np.zeros(F.shape), y, kappa=1.0)
        parts = {"gram": phi.T @ phi, "cross_y": phi.T @ y0, "cross_f": phi.T @ F.astype(np.float64)}
        for name, part in parts.items():
            if name in self._sums:
                self._sums[name] += part
            else:
                self._sums[name] = part

    def _repick(self) -> None:
        """kappa and lambda picked again on the held-out samples seen so far; beta re-solved from the sums."""
        head, s = self.head, self._sums
        assert head is not None
        X = np.stack([j[0] for j in self._judges])
        F = np.stack([j[1] for j in self._judges]).astype(np.float64)
        y = np.array([j[2] for j in self._judges], np.int64)
        phi = head.phi(head.split_taps(X)[0]).astype(np.float64)
        kappa, lam, val = head.select(s["gram"], s["cross_y"], s["cross_f"], phi, F, y)
        head.kappa, head.lam = kappa, lam
        head.resume(RecursiveRidge.from_gram(s["gram"], kappa * s["cross_y"] - s["cross_f"], lam, self.learned))
        log.info(
            "online kappa=%g, lambda=%.3g picked again at %d learned samples on %d held-out ones (accuracy %.3f)",
            kappa,
            lam,
            self.learned,
            len(y),
            val["val_accuracy"],
        )

    def _fit(self) -> OSELMHead:
        X = np.stack([r[0] for r in self._warmup])
        F = np.stack([r[1] for r in self._warmup])
        y = np.array([r[2] for r in self._warmup], np.int64)
        head = self._new_head()
        config = TrainConfig(loss=self.deployment.bundle.head.loss, seed=0)
        head.fit(_Rows(X, F), y, np.arange(len(y)), np.zeros(0, np.int64), config)
        head.rls()  # the RLS state starts here, so a saved state continues exactly this head
        self._accumulate(head, X, F, y)
        log.info("online warm-up fitted on %d samples: kappa=%g, lambda=%.3g", len(y), head.kappa, head.lam)
        return head

    def _new_head(self) -> OSELMHead:
        head = get_method(self.options.method).make_head(self.deployment.bundle)
        assert isinstance(head, OSELMHead)
        return head

    # -- what is served and committed ------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            **self.options.describe(),
            "learned_samples": self.learned,
            "warming_up": self.head is None,
            "warmup_samples": self.learned if self.head is None else self.options.warmup,
            "held_out_seen": len(self._judges),
            "since_snapshot": self.since_snapshot,
            "through_sample": self.through,
            "kappa": None if self.head is None else self.head.kappa,
            "lambda": None if self.head is None else self.head.lam,
        }

    def served(self) -> OSELMHead | None:
        """A copy of the head to serve (None before the warm-up fit), never changed afterwards."""
        return None if self.head is None else self.head.snapshot()

    def candidate(self) -> Candidate | None:
        """The learner now, for a snapshot (caller holds `lock`); None before the warm-up fit."""
        if self.head is None:
            return None
        head = self.head.snapshot()
        sums = {name: a.copy() for name, a in self._sums.items()}
        return Candidate(HeadState.of(self.options.method, head), head, self.head.rls().state(), sums, self.through, self.learned)

    def snapshot_attempted(self) -> None:
        self.since_snapshot = 0
        self.last_snapshot = time.monotonic()

    def snapshot_due(self) -> bool:
        o = self.options
        if self.head is None or not self.since_snapshot:
            return False
        by_count = o.snapshot_every > 0 and self.since_snapshot >= o.snapshot_every
        by_time = o.snapshot_seconds > 0 and time.monotonic() - self.last_snapshot >= o.snapshot_seconds
        return by_count or by_time

    # -- the saved RLS state ---------------------------------------------------------------
    def save(self, version: int, candidate: Candidate) -> None:
        """Keep the exact RLS state of committed version `version` (atomically, before it is activated)."""
        assert self.head is not None
        meta = {
            "format": RLS_FORMAT,
            "bundle_digest": self.deployment.bundle.digest,
            "version": version,
            "through": candidate.through,
            "learned": candidate.learned,
            "kappa": self.head.kappa,
            "lambda": self.head.lam,
            **self.options.describe(),
        }
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8), **candidate.rls, **candidate.sums}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy stubs mistake **arrays for allow_pickle
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.dir / f"v{version:06d}.rls.npz", buffer.getvalue())

    def _resume(self) -> None:
        """Continue from the saved state that got furthest, if one fits these options and loads."""
        saved = []
        for path in self.dir.glob("v*.rls.npz"):
            try:
                saved.append(self._read(path))
            except (StateError, ValueError, KeyError, TypeError) as e:
                log.error("online state %s is not used: %s", path, e)
        for meta, head, rls, sums in sorted(saved, key=lambda s: s[0]["through"], reverse=True):
            head.resume(rls)
            self.head, self._sums = head, sums
            self.through, self.learned = int(meta["through"]), int(meta["learned"])
            self._judges = self._judges_through(self.through)
            log.info("online learner resumed from version %d (%d samples learned)", meta["version"], self.learned)
            return

    def _judges_through(self, last_id: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """The held-out samples among those stored up to `last_id`, with their features (as `catch_up` makes them)."""
        d = self.deployment
        stored = self.samples.load(d.signature, d.bundle.input.shape, d.bundle.input.dtype.numpy)
        keep = (stored.ids <= last_id) & held_out(stored.x, self.options.holdout)
        out = []
        for i in np.flatnonzero(keep):
            X, F = d.frozen.run(stored.x[i : i + 1])
            out.append((X[0], F[0], int(stored.y[i])))
        return out

    def _read(self, path: Path) -> tuple[dict[str, Any], OSELMHead, RecursiveRidge, dict[str, np.ndarray]]:
        arrays = read_npz(path, StateError, "online state file")
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
        if meta.get("format") != RLS_FORMAT or meta.get("bundle_digest") != self.deployment.bundle.digest:
            raise StateError("made by another format or for another bundle")
        if {k: meta.get(k) for k in self.options.describe()} != self.options.describe():
            raise StateError(f"made with other --online options ({ {k: meta.get(k) for k in self.options.describe()} })")
        state = self.deployment.adapters.load(int(meta["version"]))  # the committed head: standardization, kappa, lambda
        head = self._new_head()
        head.load_state_dict(state.arrays)
        head.kappa, head.lam = float(meta["kappa"]), float(meta["lambda"])
        sums = {name: np.asarray(arrays[name], np.float64) for name in SUMS}
        dim, outputs = head.dim, head.num_outputs
        for name, shape in zip(SUMS, ((dim, dim), (dim, outputs), (dim, outputs))):
            if sums[name].shape != shape:
                raise StateError(f"{name}: expected shape {shape}, found {sums[name].shape}")
        return meta, head, RecursiveRidge.from_state(arrays, head.lam), sums


class _Rows:
    """Features already computed, for `OSELMHead.fit`."""

    def __init__(self, X: np.ndarray, F: np.ndarray) -> None:
        self.X, self.F = X, F

    def features(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.X[idx], self.F[idx]
