"""Online snapshots: the learning OS-ELM head becomes an adapter version, through the accuracy gate.

A snapshot copies the learner (under its lock, so between two samples), then judges the
copy with the gate on the held-out samples against the version active at that moment.
Accepted, it is committed (its exact RLS state saved beside it, `OnlineLearner.save`) and
activated: it is the rollback point and the state a restart resumes from. Refused, nothing
is written and the live head keeps learning. Snapshots run on demand (POST
/v1/online/snapshot) and on a schedule (`--snapshot-every` samples, `--snapshot-seconds`),
the scheduled ones in their own thread so that a sample's answer never waits for the gate.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from s2rt.serve.errors import conflict
from s2rt.serve.gate import stored_gate

if TYPE_CHECKING:
    from s2rt.serve.online import OnlineLearner
    from s2rt.serve.service import Service

log = logging.getLogger(__name__)


def take_snapshot(service: Service, learner: OnlineLearner, trigger: str) -> dict[str, Any]:
    """Commit and activate the learner's head now if the gate accepts it; the verdict either way."""
    with learner.lock:
        candidate = learner.candidate()
        if candidate is None:
            o = learner.options
            raise conflict(
                f"the online head is still warming up: {learner.learned} of the {o.warmup} learnable samples its first fit "
                f"needs are stored (--online-warmup); nothing to snapshot yet",
                "samples",
            )
        learner.snapshot_attempted()
    deployment = learner.deployment
    gate = stored_gate(service.samples, deployment, candidate.head, learner.options.holdout)
    if not learner.options.holdout:
        gate = replace(gate, check=False)
    with service.swap_lock:
        if service.serving.deployment.bundle.digest != deployment.bundle.digest:
            return {"accepted": False, "reason": "the bundle was replaced while the snapshot was taken", "metrics": {}}
        store = deployment.adapters
        active = store.active
        verdict = gate(deployment.serving(store.load(active), active))
        if verdict["accepted"]:
            online = {"learned": candidate.learned, "through_sample": candidate.through, "trigger": trigger}
            number = store.commit(candidate.state, parent=active, metrics=verdict["metrics"], origin="online", online=online)
            learner.save(number, candidate)
            store.activate(number)
            verdict["version"] = number
            service.serving = replace(service.serving, version=number)
    deployment.cache.flush()
    verdict["learned_samples"] = candidate.learned
    log.info(
        "online snapshot (%s) of %d learned samples: %s",
        trigger,
        candidate.learned,
        verdict["reason"],
        extra={"event": "online_snapshot", "accepted": verdict["accepted"], "version": verdict.get("version")},
    )
    return verdict


class Scheduler:
    """Takes the scheduled snapshots in one thread: woken by `poke` (a sample made one due) or every
    `--snapshot-seconds`."""

    def __init__(self, service: Service, learner_of: Any, seconds: float) -> None:
        self.service, self.learner_of, self.seconds = service, learner_of, seconds
        self._wake, self._stop = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, name="s2rt-online-snapshots", daemon=True)
        self.thread.start()

    def poke(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._wake.set()
        self.thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.seconds or None)
            self._wake.clear()
            if self._stop.is_set():
                return
            learner = self.learner_of()
            if learner is None:
                continue
            with learner.lock:
                due = learner.snapshot_due()
            if not due:
                continue
            try:
                take_snapshot(self.service, learner, "schedule")
            except Exception:  # a failed snapshot must not end the schedule; the live head keeps learning
                log.exception("scheduled online snapshot failed")
