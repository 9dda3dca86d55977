"""Fine-tune jobs: one at a time, in a worker thread, while predictions keep being answered.

A job trains a copy of the active adapters (or of the bundle's initial head, or of a
stored version: `start_from`), with that version's method, on a snapshot of the stored samples, minus the held-out
split (`gate.held_out`); `examples` is how many it trains on. When the samples hold classes
the bundle lacks (`s2rt serve --allow-new-classes`), the start head grows a row for each
class it does not have yet and trains in two stages (`s2rt.heads.grown_train`); the new
version's `new_labels` name them. When the run ends, the new
adapters are committed and activated only if `gate.AccuracyGate` accepts them: held-out
accuracy not worse than the version active at that moment; otherwise the active version
stays and the job says why. With `commit: always` (a fleet round, `serve.fleet`) the new
adapters are committed either way, as an inactive version when the gate refuses them.
Job records live in the database: a job that was running when the daemon died is
reported as interrupted after the restart.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from s2rt.bundle import Bundle, Optimizer
from s2rt.errors import S2LError, StateError
from s2rt.features import CachedFeatures
from s2rt.head import AdapterHead
from s2rt.heads.grown import GrownHead, PaddedFeatures, grow
from s2rt.heads.grown_train import train_grown
from s2rt.methods import METHODS, TrainableHead, get_method
from s2rt.serve.errors import ApiError, conflict, disk_full, not_found
from s2rt.serve.gate import AccuracyGate, held_out
from s2rt.serve.samples import SampleSet
from s2rt.state import HeadState
from s2rt.store import UnknownVersionError
from s2rt.trainer import TrainConfig, evaluate, train

if TYPE_CHECKING:
    from s2rt.serve.service import Deployment, Service, Serving

log = logging.getLogger(__name__)

RUNNING = "running"
FINISHED = ("succeeded", "rejected", "failed", "cancelled", "interrupted")


@dataclass(frozen=True)
class JobOptions:
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    optimizer: str | None = None
    seed: int = 0
    val_fraction: float = 0.2
    check_accuracy: bool = True
    start_from: str | int = "active"  # "active", "initial" or a version number (e.g. an imported global version)
    logit_adjustment: float = 0.0  # TrainConfig.logit_adjustment
    commit: str = "accepted"  # "always": keep the trained adapters as a new version even when the gate keeps the active one
    method: str | None = None  # None: the start version's method (s2rt.methods)
    new_classes: bool = True  # learn the classes stored samples brought beyond the start version's (grow the head)


class JobCancelled(Exception):
    pass


@dataclass
class Plan:
    deployment: Deployment
    config: TrainConfig
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    start: HeadState
    start_version: int
    check_accuracy: bool
    commit_always: bool


class Job:
    def __init__(self, job_id: int, record: dict[str, Any]) -> None:
        self.id = job_id
        self.cancel = threading.Event()
        self.cancel_reason = "by request"
        self._lock = threading.Lock()
        self._record = record

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._record.update(fields)

    def append_history(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._record["history"].append(entry)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._record)

    @property
    def state(self) -> str:
        with self._lock:
            return str(self._record["state"])


class JobRunner:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.db = service.db
        self._lock = threading.Lock()
        self.current: Job | None = None
        self.thread: threading.Thread | None = None
        self._mark_interrupted()

    @property
    def busy(self) -> bool:
        job = self.current
        return job is not None and job.state == RUNNING

    @contextmanager
    def exclusive(self, what: str) -> Iterator[None]:
        """No job may start while the block runs; 409 if one is running already."""
        with self._lock:
            if self.busy:
                assert self.current is not None
                raise conflict(f"job {self.current.id} is running; cancel it or wait for it before {what}")
            yield

    # -- starting ----------------------------------------------------------------------
    def start(self, options: JobOptions) -> dict[str, Any]:
        with self.exclusive("starting another"):
            self.service.check_not_online("starting a fine-tune job")
            if self.service.closing:
                raise ApiError(503, "shutting_down", "the daemon is shutting down")
            serving = self.service.serving
            plan = self._plan(serving, options)
            record: dict[str, Any] = {
                "state": RUNNING,
                "bundle_digest": serving.deployment.bundle.digest,
                "options": asdict(options),
                "created_utc": _now(),
                "finished_utc": None,
                "start_version": plan.start_version,
                "n_train": len(plan.y_train),
                "examples": len(plan.y_train),
                "n_val": len(plan.y_val),
                "progress": {"epoch": 0, "epochs": plan.config.epochs, "batch": 0, "batches": 0, "fraction": 0.0},
                "loss": None,
                "val_accuracy": None,
                "history": [],
                "result": None,
                "message": "",
            }
            job = Job(self._insert(record), record)
            job.update(id=job.id)
            self.current = job
            self.thread = threading.Thread(target=self._run, args=(job, plan), name=f"s2rt-job-{job.id}", daemon=True)
            self.thread.start()
            log.info("job %d started on %d samples", job.id, len(plan.y_train), extra={"event": "job_started", "job": job.id})
            return job.snapshot()

    def _plan(self, serving: Serving, options: JobOptions) -> Plan:
        deployment = serving.deployment
        bundle = deployment.bundle
        if not deployment.classify:
            raise conflict("this bundle's head is a regression (MSE) head; the daemon fine-tunes classifiers only")
        if options.check_accuracy and not options.val_fraction:
            raise ApiError(422, "invalid_input", "val_fraction: must be > 0 when check_accuracy is true", "val_fraction")
        samples = self.service.samples.load(deployment.signature, bundle.input.shape, bundle.input.dtype.numpy)
        start_version, start = _start(serving, options.start_from)
        start = _with_method(start, options.method, bundle)
        if not options.new_classes:  # only the classes the start version has (a fleet round: the global adapters' classes)
            keep = samples.y < len(bundle.labels) + len(start.new_labels)
            samples = SampleSet(samples.ids[keep], samples.x[keep], samples.y[keep])
        val = held_out(samples.x, options.val_fraction)
        if not (~val).any():
            raise conflict(
                f"{len(samples.y)} labelled samples stored, {int(val.sum())} of them held out: nothing to train on; ingest samples first",
                "samples",
            )
        if options.check_accuracy and not val.any():
            raise conflict(
                f"none of the {len(samples.y)} stored samples falls in the held-out split (val_fraction {options.val_fraction}), "
                "so the new adapters could not be checked; ingest more samples or set check_accuracy to false",
                "samples",
            )
        d = bundle.head.defaults
        try:
            config = TrainConfig(
                epochs=options.epochs or d.epochs,
                batch_size=options.batch_size or d.batch_size,
                learning_rate=options.learning_rate or d.learning_rate,
                optimizer=Optimizer[options.optimizer.upper()] if options.optimizer else d.optimizer,
                loss=bundle.head.loss,
                seed=options.seed,
                logit_adjustment=options.logit_adjustment,
            )
        except S2LError as e:
            raise ApiError(422, "invalid_input", str(e)) from None
        start = _with_new_classes(start, self.service.samples.new_classes(deployment.signature), samples.y, bundle)
        return Plan(
            deployment,
            config,
            samples.x[~val],
            samples.y[~val],
            samples.x[val],
            samples.y[val],
            start,
            start_version,
            options.check_accuracy,
            options.commit == "always",
        )

    # -- running -----------------------------------------------------------------------
    def _run(self, job: Job, plan: Plan) -> None:
        started = time.perf_counter()
        deployment, metrics = plan.deployment, self.service.metrics
        train_src = val_src = None
        try:
            head = deployment.head(plan.start)
            train_src = CachedFeatures(deployment.frozen, plan.x_train, plan.y_train, deployment.cache)
            val_src = CachedFeatures(deployment.frozen, plan.x_val, plan.y_val, deployment.cache) if len(plan.y_val) else None
            listener = _Listener(job, head, val_src, plan)
            if isinstance(head, GrownHead):  # old classes first, then the new ones with the old pinned
                report = train_grown(head, train_src, plan.y_train, plan.config, progress=listener)
            else:
                report = train(head, train_src, plan.y_train, plan.config, progress=listener)
            if report.diverged:
                state, message, result = "rejected", f"training diverged: {report.message}; the active version stays", None
            else:
                gate = AccuracyGate(head, val_src, plan.y_val, len(plan.y_train), plan.config.batch_size, plan.check_accuracy)
                result = self.service.swap_in(
                    deployment,
                    HeadState.of(plan.start.method, head, plan.start.new_labels),
                    gate,
                    plan.commit_always,
                    job=job.id,
                    epochs=report.epochs_run,
                    start=plan.start_version,
                )
                state = "succeeded" if result["accepted"] else "rejected"
                message = result["reason"]
                if not result["accepted"] and "version" in result:
                    message += f"; the trained adapters are kept as version {result['version']} (not active)"
        except JobCancelled:
            state, message, result = "cancelled", f"cancelled ({job.cancel_reason}); the active version stays", None
        except S2LError as e:
            state, message, result = "failed", disk_full(e) or str(e), None
        except Exception as e:  # a bug must not kill the worker silently; the job record says what happened
            full = disk_full(e)
            if full is None:
                log.exception("job %d failed", job.id)
            state, message, result = "failed", full or f"internal error: {type(e).__name__}: {e}", None
        seconds = time.perf_counter() - started
        hits = sum(s.hits for s in (train_src, val_src) if s is not None)
        misses = sum(s.misses for s in (train_src, val_src) if s is not None)
        metrics.cache_hits.inc(hits)
        metrics.cache_misses.inc(misses)
        metrics.training_runs.inc(outcome=state)
        metrics.training_seconds.inc(seconds)
        deployment.cache.flush()
        job.update(
            state=state,
            message=message,
            finished_utc=_now(),
            result=_clean({**(result or {}), "seconds": seconds, "cache_hits": hits, "cache_misses": misses}),
        )
        self._save(job)
        log.info("job %d %s: %s", job.id, state, message, extra={"event": "job_finished", "job": job.id, "state": state})

    # -- looking and stopping ----------------------------------------------------------
    def get(self, job_id: int) -> dict[str, Any]:
        job = self.current
        if job is not None and job.id == job_id:
            return job.snapshot()
        with self.db.reading() as c:
            row = c.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise not_found(f"job {job_id} does not exist", "job_id")
        return dict(json.loads(row[0]))

    def list(self, limit: int) -> list[dict[str, Any]]:
        with self.db.reading() as c:
            ids = [r[0] for r in c.execute("SELECT id FROM jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()]
        return [self.get(i) for i in ids]

    def cancel(self, job_id: int) -> dict[str, Any]:
        job = self.current
        if job is None or job.id != job_id or job.state != RUNNING:
            record = self.get(job_id)
            raise conflict(f"job {job_id} is not running (it {record['state']})", "job_id")
        job.cancel.set()
        return job.snapshot()

    def shutdown(self, timeout: float) -> None:
        """Let the running job finish within half of `timeout` s; past that, cancel it and wait the rest.

        A field fine-tune usually takes seconds, so a stop rarely throws its work away,
        while a long run still cannot hold the shutdown beyond `timeout`.
        """
        job, thread = self.current, self.thread
        if job is None or thread is None:
            return
        thread.join(timeout / 2)
        if thread.is_alive() and job.state == RUNNING:
            job.cancel_reason = "the daemon is shutting down"
            job.cancel.set()
        thread.join(timeout / 2)
        if thread.is_alive():
            log.error("job %d did not stop within %.1f s; it will be reported as interrupted", job.id, timeout)

    # -- records -----------------------------------------------------------------------
    def _insert(self, record: dict[str, Any]) -> int:
        with self.db.transaction() as c:
            cur = c.execute(
                "INSERT INTO jobs (bundle_digest, state, record) VALUES (?, ?, ?)",
                (record["bundle_digest"], record["state"], json.dumps(record)),
            )
            job_id = int(cur.lastrowid or 0)
            c.execute("UPDATE jobs SET record = ? WHERE id = ?", (json.dumps({"id": job_id, **record}), job_id))
        return job_id

    def _save(self, job: Job) -> None:
        record = job.snapshot()
        try:
            with self.db.transaction() as c:
                c.execute("UPDATE jobs SET state = ?, record = ? WHERE id = ?", (record["state"], json.dumps(record), job.id))
        except Exception:  # the database closed under a job that outlived the shutdown wait
            log.exception("job %d: cannot record its end", job.id)

    def _mark_interrupted(self) -> None:
        with self.db.transaction() as c:
            rows = c.execute("SELECT id, record FROM jobs WHERE state = ?", (RUNNING,)).fetchall()
            for job_id, raw in rows:
                record = json.loads(raw)
                record.update(
                    state="interrupted",
                    message="the daemon stopped while this job ran (crash, kill or power loss); the active version stayed",
                )
                c.execute("UPDATE jobs SET state = ?, record = ? WHERE id = ?", ("interrupted", json.dumps(record), job_id))
        if rows:
            log.warning("%d job(s) were interrupted by the last stop", len(rows))


class _Listener:
    """Per batch: progress and the cancel check. Per epoch: held-out loss and accuracy."""

    def __init__(self, job: Job, head: TrainableHead, val: CachedFeatures | None, plan: Plan) -> None:
        self.job, self.head, self.val, self.plan = job, head, val, plan

    def __call__(self, epoch: int, epochs: int, batch: int, batches: int, loss: float) -> None:
        if self.job.cancel.is_set():
            raise JobCancelled
        fraction = ((epoch - 1) * batches + batch) / (epochs * batches)
        progress = {"epoch": epoch, "epochs": epochs, "batch": batch, "batches": batches, "fraction": round(fraction, 4)}
        self.job.update(progress=progress, loss=_finite(loss))

    def epoch_end(self, epoch: int, epochs: int, metrics: Any) -> None:
        entry = {"epoch": epoch, "train_loss": _finite(metrics["train_loss"])}
        if self.val is not None:
            m = evaluate(self.head, PaddedFeatures(self.val, self.head.num_outputs), self.plan.y_val, self.plan.config.batch_size)
            entry |= {"val_loss": _finite(m["loss"]), "val_accuracy": m["accuracy"]}
            self.job.update(val_accuracy=m["accuracy"])
        self.job.append_history(entry)

    def close(self) -> None:
        pass


def _start(serving: Serving, start_from: str | int) -> tuple[int, HeadState]:
    """The version a job starts from and its head state (a copy): the active one, the bundle's initial head, or a stored version."""
    store = serving.deployment.adapters
    if start_from == "active":
        return serving.version, serving.state()
    number = 0 if start_from == "initial" else int(start_from)
    try:
        return number, store.load(number)
    except UnknownVersionError as e:
        raise not_found(str(e), "start_from") from None
    except StateError as e:
        raise conflict(f"start_from: {e}", "start_from") from None


def _with_method(start: HeadState, method: str | None, bundle: Bundle) -> HeadState:
    """`start` trained by `method`: the same numbers within a method family, the method's fresh head otherwise."""
    if method is None:
        return start
    try:
        chosen = get_method(method)
    except S2LError as e:
        raise ApiError(422, "invalid_input", f"method: {e}", "method") from None
    if chosen.family == METHODS[start.method].family:
        return replace(start, method=chosen.name)
    return HeadState.of(chosen.name, chosen.make_head(bundle))


def _with_new_classes(start: HeadState, learned: tuple[str, ...], y: np.ndarray, bundle: Bundle) -> HeadState:
    """`start` grown by the learned classes that stored samples carry and it lacks (the classes
    list only grows, so a version's new classes are a prefix of it)."""
    present = max(int(y.max()) + 1 - len(bundle.labels), 0) if len(y) else 0
    wanted = learned[: max(present, len(start.new_labels))]
    if wanted[: len(start.new_labels)] != start.new_labels:
        raise conflict(f"start_from: the version's new classes {list(start.new_labels)} are not the daemon's {list(learned)}", "start_from")
    if wanted == start.new_labels:
        return start
    head = start.head(bundle)
    if not isinstance(head, (AdapterHead, GrownHead)):
        raise ApiError(
            422,
            "invalid_input",
            f"method: the samples hold new classes {list(wanted[len(start.new_labels) :])[:5]}, which only skip2lora learns "
            f"(a head that grows a row per class), not {start.method}; start the job with method skip2lora",
            "method",
        )
    return HeadState.of(start.method, grow(head, len(bundle.labels), len(wanted)), wanted)


def _finite(v: Any) -> Any:
    return float(v) if v is not None and math.isfinite(v) else None


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe: non-finite floats become null."""
    return {k: (_finite(v) if isinstance(v, float) else _clean(v) if isinstance(v, dict) else v) for k, v in d.items()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
