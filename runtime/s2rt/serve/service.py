"""The daemon's core, without HTTP: the deployed bundle, its active adapters, samples and jobs.

What predictions use is one immutable `Serving` (bundle, frozen model, a head of the
active version's method, version) swapped as a single reference, so a request sees the
old adapters or the new ones, never a mix, and a swap never waits for requests. Every
change of what is served (activate, roll back, a finished job, a deploy) is durable on
disk before the swap. With `--online` (`s2rt.serve.online`) each stored sample is learned
and a copy of the learning head swapped in before the sample is acknowledged.

A request reads `self.serving` once and uses that snapshot from parsing its payload to
its answer: a sample whose label name was resolved against one bundle is stored under
that bundle's signature even if another bundle is deployed meanwhile (the methods below
that take a raw payload exist for that).

Uploads (`deploy`) are off unless the operator configured a trusted key (then they must
be signed by it) or opted in with `allow_unsigned_deploy`: a deployed bundle's ONNX is
parsed by onnxruntime inside the daemon, so who may deploy is who may run a parser on
the device's data.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable
from copy import copy as shallow_copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from s2rt.backend import open_backend, predict_graph
from s2rt.backend.predict_graph import CLASSES, LOGITS, PROBABILITIES, PredictGraph
from s2rt.bundle import Bundle, Loss
from s2rt.bundle.signing import PublicKey
from s2rt.cache import SkipCache
from s2rt.errors import BackendError, BundleError, RuntimeInputError, S2LError, StateError
from s2rt.folded import AFFINE_METHODS, fold
from s2rt.frozen import FrozenModel
from s2rt.heads.grown import MAX_NEW_CLASSES, pad_logits
from s2rt.methods import TrainableHead
from s2rt.serve.db import Database
from s2rt.serve.deploy import BundleShelf, Copy, better_copy
from s2rt.serve.errors import ApiError, conflict, invalid, not_found
from s2rt.serve.inputs import labels_and_new_classes, samples_from_json, samples_from_npy
from s2rt.serve.jobs import JobRunner
from s2rt.serve.metrics import Metrics
from s2rt.serve.online import OnlineLearner, OnlineOptions
from s2rt.serve.samples import SampleStore, signature
from s2rt.serve.snapshots import Scheduler, take_snapshot
from s2rt.session import softmax
from s2rt.state import HeadState
from s2rt.store import AdapterStore, UnknownVersionError
from s2rt.trainer import predict_logits
from s2rt.trust import open_trusted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceConfig:
    state_dir: Path
    bundle: Path | None = None
    backend: str = "auto"
    threads: int = 1
    cache_capacity: int = 20_000
    trusted_keys: tuple[PublicKey, ...] = ()  # when set, only bundles signed by one of them are served (s2rt.trust)
    allow_unsigned_deploy: bool = False  # without trusted keys, accept uploaded bundles anyway (unsigned or unverifiable)
    fleet_keys: tuple[PublicKey, ...] = ()  # who may sign imported global adapter versions (s2rt.serve.fleet); none: imports off
    allow_new_classes: bool = False  # samples may name classes the bundle lacks; jobs then grow the head (s2rt.heads.grown)
    online: OnlineOptions | None = None  # --online: the served head learns every labelled sample (s2rt.serve.online)


class Deployment:
    """One bundle in service: its file, frozen model, adapter versions and Skip-Cache file."""

    def __init__(self, copy: Copy, frozen: FrozenModel, state_dir: Path, cache_capacity: int) -> None:
        self.data, bundle = copy  # the bundle's arrays are views into `data`: keeping the file costs nothing
        self.bundle = bundle
        self.frozen = frozen
        self.signature = signature(bundle)
        self.classify = bundle.head.loss == Loss.SOFTMAX_CROSS_ENTROPY
        # predictions in one onnxruntime call, an affine head's fold bound as inputs (see Serving.folded)
        on_onnx = frozen.backend.name == "onnx" and predict_graph.enabled()
        self.graph = PredictGraph(bundle, frozen.segment, frozen.backend.threads) if on_onnx else None
        self.adapters = AdapterStore(state_dir / "adapters", bundle)
        self.cache = SkipCache(bundle.cache, cache_capacity, state_dir / "cache" / f"{bundle.digest[:16]}.s2c", bundle.digest)

    def prune_caches(self) -> None:
        """Delete the cache files of bundles no longer served (a new bundle's cache starts empty)."""
        assert self.cache.path is not None
        for other in self.cache.path.parent.glob("*.s2c"):
            if other != self.cache.path:
                other.unlink(missing_ok=True)

    def refiled(self, copy: Copy) -> Deployment:
        """This deployment served from another file of the same body (a signature added or changed)."""
        other = shallow_copy(self)  # shares the frozen model, adapter store and cache
        other.data, other.bundle = copy
        return other

    def head(self, state: HeadState) -> TrainableHead:
        """A new head of `state`'s method holding its numbers."""
        return state.head(self.bundle)

    def serving(self, state: HeadState, version: int) -> Serving:
        return Serving(self, self.head(state), version, state.method, new_labels=state.new_labels)

    def close(self) -> None:
        self.cache.close()


@dataclass(frozen=True)
class Serving:
    deployment: Deployment
    head: TrainableHead  # never changed once served: a new head is a new Serving
    version: int  # the active committed version (with --online, the live head has learned more since)
    method: str
    learned: int | None = None  # with --online: the samples the served head has learned
    new_labels: tuple[str, ...] = ()  # the classes this version learned beyond the bundle's
    # an affine head as (W, b) for the predict graph; None: the head runs in NumPy (also a grown head: C + K outputs)
    folded: tuple[np.ndarray, np.ndarray] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        affine = self.deployment.graph is not None and self.method in AFFINE_METHODS and not self.new_labels
        object.__setattr__(self, "folded", fold(self.head) if affine else None)

    @property
    def labels(self) -> tuple[str, ...]:
        """The served classes, in the order of the probabilities: the bundle's, then the version's new ones."""
        return self.deployment.bundle.labels + self.new_labels

    def state(self) -> HeadState:
        """A copy of the served head's method, numbers and new classes."""
        return HeadState.of(self.method, self.head, self.new_labels)


class Service:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_file = _lock(self.state_dir)
        self.metrics = Metrics()
        self.db = Database(self.state_dir / "samples.sqlite")
        self.samples = SampleStore(self.db)
        self.shelf = BundleShelf(self.state_dir, config.trusted_keys)
        if config.allow_unsigned_deploy and not config.trusted_keys:
            log.warning("--allow-unsigned-deploy: uploaded bundles are served without a signature check")
        copy = self.shelf.startup(config.bundle)
        if config.online is not None and copy[1].head.loss != Loss.SOFTMAX_CROSS_ENTROPY:
            raise RuntimeInputError(f"--online {config.online.method}: {ONLINE_REGRESSION}")
        if config.online is not None and config.allow_new_classes:
            raise RuntimeInputError(
                f"--online {config.online.method} cannot be combined with --allow-new-classes: the online head does not grow "
                "new classes (jobs learn them); choose one"
            )
        deployment = Deployment(copy, self._frozen(copy[1]), self.state_dir, config.cache_capacity)
        deployment.prune_caches()
        self._swap = threading.Lock()
        self._labelling = threading.Lock()
        self.online = self._learner(deployment)
        self.serving = self._serving(deployment, self.online)
        self.scheduler = Scheduler(self, lambda: self.online, config.online.snapshot_seconds) if config.online else None
        self.jobs = JobRunner(self)
        self.closing = False
        self.metrics.gauge("s2rt_active_adapter_version", "adapter version serving predictions", lambda: self.serving.version)
        self.metrics.gauge("s2rt_samples_stored", "labelled samples for the bundle's input signature", self._sample_count)
        self.metrics.gauge("s2rt_cache_records", "samples in the Skip-Cache", lambda: self.serving.deployment.cache.count)
        self.metrics.gauge("s2rt_training_active", "1 while a fine-tune job runs", lambda: float(self.jobs.busy))
        if config.online is not None:
            self.metrics.gauge("s2rt_online_learned_samples", "samples the online head has learned", lambda: self.serving.learned or 0)

    @property
    def swap_lock(self) -> threading.Lock:
        """Held while what is served changes (swaps are atomic with respect to each other)."""
        return self._swap

    def _frozen(self, bundle: Bundle) -> FrozenModel:
        return FrozenModel(bundle, open_backend(bundle, self.config.backend, self.config.threads))

    def _serving(self, deployment: Deployment, learner: OnlineLearner | None) -> Serving:
        version, state = deployment.adapters.load_active()
        head = None if learner is None else learner.served()
        if learner is None or head is None:
            return deployment.serving(state, version)
        return Serving(deployment, head, version, learner.options.method, learner.learned)

    def _learner(self, deployment: Deployment) -> OnlineLearner | None:
        options = self.config.online
        return None if options is None else OnlineLearner(deployment, self.samples, self.state_dir, options)

    def _sample_count(self) -> float:
        return self.samples.count(self.serving.deployment.signature)

    # -- predictions and samples -------------------------------------------------------
    def predict_json(self, value: Any) -> dict[str, Any]:
        s = self.serving
        return self.predict(samples_from_json(value, s.deployment.bundle.input)[0], s)

    def predict_npy(self, body: bytes) -> dict[str, Any]:
        s = self.serving
        return self.predict(samples_from_npy(body, s.deployment.bundle.input)[0], s)

    def predict(self, x: np.ndarray, serving: Serving | None = None) -> dict[str, Any]:
        """Predictions for `x`, checked against `serving` (default: the one serving now): one
        onnxruntime call with the predict graph for an affine head, else the head in NumPy."""
        s = serving or self.serving
        deployment = s.deployment
        x = deployment.frozen.check_input(x)
        if s.folded is None or deployment.graph is None:
            taps, frozen_logits = deployment.frozen.run_checked(x)
            z = predict_logits(s.head, taps, pad_logits(frozen_logits, s.head.num_outputs))
            classes, probabilities = z.argmax(axis=1), softmax(z)
        elif deployment.classify:
            classes, probabilities = deployment.graph.run(x, *s.folded, (CLASSES, PROBABILITIES))
        else:
            (z,) = deployment.graph.run(x, *s.folded, (LOGITS,))
        self.metrics.predictions.inc(len(x))
        if not deployment.classify:
            return {"adapter_version": s.version, "classes": [], "labels": [], "outputs": z.tolist()}
        labels = s.labels
        out = {
            "adapter_version": s.version,
            "classes": classes.tolist(),
            "labels": [labels[c] for c in classes],
            "probabilities": probabilities.tolist(),
        }
        if s.learned is not None:
            out["learned_samples"] = s.learned
        return out

    def ingest_json(self, x_value: Any, y_value: Any) -> list[int]:
        """Store labelled samples from a JSON payload: parsed, labelled and stored against one bundle.
        Label names beyond the bundle's and the classes learned so far become new classes when
        the daemon allows them (`ServiceConfig.allow_new_classes`), else they are refused."""
        deployment = self.serving.deployment
        x, single = samples_from_json(x_value, deployment.bundle.input)
        allow = self.config.allow_new_classes and deployment.classify
        with self._labelling:  # numbering new classes and storing them is one step
            learned = self.samples.new_classes(deployment.signature)
            known = deployment.bundle.labels + learned
            y, added = labels_and_new_classes(y_value, known, len(x), single, allow_new=allow)
            if len(learned) + len(added) > MAX_NEW_CLASSES:
                raise invalid("y", f"{len(added)} new classes on top of {len(learned)} would exceed {MAX_NEW_CLASSES}")
            if added:
                log.info("new classes %s", list(added), extra={"event": "new_classes", "labels": list(added)})
            return self.ingest(x, y, deployment, added, len(learned))

    def ingest(
        self, x: np.ndarray, y: np.ndarray, deployment: Deployment | None = None, new_classes: tuple[str, ...] = (), known: int = 0
    ) -> list[int]:
        """Store samples whose labels index `deployment`'s classes (default: the bundle serving now),
        then its learned classes; `new_classes` (numbered after the `known` learned ones) are recorded with them."""
        deployment = deployment or self.serving.deployment
        if not deployment.classify:
            raise conflict("this bundle's head is a regression (MSE) head; the daemon collects class-labelled samples only")
        learner = self.online
        if learner is None or learner.deployment.bundle.digest != deployment.bundle.digest:
            ids = self.samples.add(deployment.signature, x, y, new_classes, known)
        else:
            with learner.lock:  # stored and learned in id order; answered once the served head has learned them
                ids = self.samples.add(deployment.signature, x, y, new_classes, known)
                if learner.catch_up():
                    self._publish(learner)
                due = learner.snapshot_due()
            if due and self.scheduler is not None:
                self.scheduler.poke()
        self.metrics.ingested.inc(len(ids))
        return ids

    def _publish(self, learner: OnlineLearner) -> None:
        """Serve a copy of the learner's head (caller holds the learner's lock)."""
        head = learner.served()
        with self._swap:
            current = self.serving
            d = current.deployment
            if head is not None and d.bundle.digest == learner.deployment.bundle.digest:
                self.serving = Serving(d, head, d.adapters.active, learner.options.method, learner.learned)

    # -- online learning ---------------------------------------------------------------
    def online_learner(self) -> OnlineLearner:
        if self.online is None:
            raise conflict("the daemon does not learn online: start it with --online (s2rt serve --help)")
        return self.online

    def snapshot(self) -> dict[str, Any]:
        """Commit the online head as an adapter version now, if the accuracy gate accepts it."""
        return take_snapshot(self, self.online_learner(), "request")

    def check_not_online(self, what: str) -> None:
        """409 while the daemon learns online: the served head follows the samples, not a chosen version."""
        if self.online is not None:
            raise conflict(
                f"the daemon learns online (--online {self.online.options.method}): the served head follows every labelled "
                f"sample, so {what} is refused; snapshots become versions (POST /v1/online/snapshot); restart without "
                "--online to serve versions by hand"
            )

    # -- adapter versions --------------------------------------------------------------
    def activate(self, number: int) -> int:
        self.check_not_online("activating a version")
        with self._swap:
            deployment = self.serving.deployment
            state = store_call(lambda: deployment.adapters.activate(number))
            self.serving = deployment.serving(state, number)
            return number

    def rollback(self) -> int:
        self.check_not_online("rolling back")
        with self._swap:
            deployment = self.serving.deployment
            number, state = store_call(deployment.adapters.rollback)
            self.serving = deployment.serving(state, number)
            return number

    def swap_in(
        self,
        deployment: Deployment,
        candidate: HeadState,
        decide: Callable[[Serving], dict[str, Any]],
        commit_always: bool = False,
        **meta: Any,
    ) -> dict[str, Any]:
        """Commit and activate `candidate` if `decide(current serving)` accepts it (with `commit_always`, commit
        it as a new inactive version otherwise); atomic with respect to other swaps."""
        with self._swap:
            current = self.serving
            if current.deployment is not deployment:
                return {"accepted": False, "reason": "the bundle was replaced while the job ran"}
            verdict = decide(current)
            if verdict["accepted"] or commit_always:
                number = deployment.adapters.commit(candidate, parent=current.version, metrics=verdict["metrics"], **meta)
                verdict["version"] = number
            if verdict["accepted"]:
                state = deployment.adapters.activate(number)
                self.serving = deployment.serving(state, number)
            return verdict

    # -- deploy ------------------------------------------------------------------------
    def check_deploy_allowed(self) -> None:
        """ApiError 403 unless uploads are on: a trusted key is configured, or --allow-unsigned-deploy."""
        if not self.config.trusted_keys and not self.config.allow_unsigned_deploy:
            raise ApiError(
                403,
                "deploy_disabled",
                "uploading bundles is off: start the daemon with --trusted-key PUB (uploads must then be signed by that key) "
                "or, to accept unsigned bundles, --allow-unsigned-deploy",
                "body",
            )

    def deploy(self, data: bytes) -> dict[str, Any]:
        """Verify an uploaded bundle and serve it; the running one stays if anything fails."""
        self.check_deploy_allowed()
        try:
            bundle = open_trusted(data, self.config.trusted_keys, name="uploaded bundle")
            frozen = None if bundle.digest == self.serving.deployment.bundle.digest else self._frozen(bundle)
        except (BundleError, BackendError) as e:
            raise ApiError(422, "invalid_bundle", str(e), "body") from None
        if self.config.online is not None and bundle.head.loss != Loss.SOFTMAX_CROSS_ENTROPY:
            raise conflict(f"the daemon learns online (--online {self.config.online.method}): {ONLINE_REGRESSION}", "body")
        with self.jobs.exclusive("deploying a bundle"), self._swap:
            old = self.serving.deployment
            if bundle.digest == old.bundle.digest:
                return self._refile(old, (data, bundle))
            deployment = Deployment((data, bundle), frozen or self._frozen(bundle), self.state_dir, self.config.cache_capacity)
            try:
                learner = self._learner(deployment)
                serving = self._serving(deployment, learner)
                self.shelf.install((data, bundle))
            except BaseException:
                deployment.close()
                raise
            self.serving, self.online = serving, learner
            old.close()
            deployment.prune_caches()
            kept = self.samples.count(deployment.signature)
        log.info("serving bundle %s with %d samples of its signature", bundle.digest[:12], kept)
        return {"bundle_digest": bundle.digest, "changed": True, "samples": kept}

    def _refile(self, old: Deployment, copy: Copy) -> dict[str, Any]:
        """An upload of the served body: keep the better file of the two (the signed one); caller holds `_swap`."""
        data, bundle = copy
        changed = data != old.data and better_copy(bundle, old.bundle)
        if changed:
            self.shelf.install(copy)
            self.serving = replace(self.serving, deployment=old.refiled(copy))
        return {"bundle_digest": bundle.digest, "changed": changed, "samples": self.samples.count(old.signature)}

    def bundle_file(self) -> tuple[str, bytes]:
        """The served bundle's digest and file bytes (one snapshot)."""
        deployment = self.serving.deployment
        return deployment.bundle.digest, deployment.data

    # -- lifecycle ---------------------------------------------------------------------
    def close(self, timeout: float) -> None:
        """Stop the running job (bounded wait), flush the cache, close the database, release the state dir."""
        self.closing = True
        if self.scheduler is not None:
            self.scheduler.stop(timeout / 2)
        self.jobs.shutdown(timeout)
        self.serving.deployment.close()
        self.db.close()
        self._lock_file.close()


ONLINE_REGRESSION = "the bundle's head is a regression (MSE) head, and online OS-ELM learns class-labelled samples only"


def store_call(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except UnknownVersionError as e:
        raise not_found(str(e), "version") from None
    except StateError as e:
        raise conflict(str(e), "version") from None


def _lock(state_dir: Path) -> Any:
    """Hold an exclusive lock on DIR/lock for the daemon's lifetime: one daemon per state dir."""
    f = open(state_dir / "lock", "a+")  # noqa: SIM115  # held open until close()
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise StateError(f"{state_dir}: another s2rt serve is using this state directory") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


__all__ = ["Deployment", "S2LError", "Service", "ServiceConfig", "Serving"]
