"""s2rt methods, through the library API: s2conv.convert -> s2rt.session.Model.fine_tune.

The bundle is converted once per (workload, seed) outside the timed region (the seed
draws the adapters' initial A); the timed region is `Model.fine_tune`, which hashes the
samples, fills the Skip-Cache on first sight and trains the head.
"""

from __future__ import annotations

import time
from typing import Any

from s2lbench.methods import ADAPTER_GRID, CLOSED_FORM, Job, Method, RunResult, score

try:
    from s2rt.heads.oselm import RANDOM_FEATURES
except ImportError:  # older runtimes (no oselm-rf)
    RANDOM_FEATURES = 0

# s2rt method name (s2rt.methods) -> (benchmark name, label, learning-rate grid)
S2RT_METHODS = {
    "skip2lora": ("s2rt-skip2lora", "Skip2-LoRA (s2rt)", ADAPTER_GRID),
    "skiplora": ("s2rt-skip2lora-nocache", "Skip2-LoRA, no cache (s2rt)", ADAPTER_GRID),
    "lora-last": ("s2rt-lora-last", "LoRA-Last (s2rt)", ADAPTER_GRID),
    "ft-last": ("s2rt-ft-last", "FT-Last (s2rt)", ADAPTER_GRID),
    "ft-bias": ("s2rt-ft-bias", "FT-Bias, last layer (s2rt)", ADAPTER_GRID),
    "skip2relu": ("s2rt-skip2relu", "Skip2-ReLU r=32, standardized taps (s2rt)", ADAPTER_GRID),
    "oselm": ("s2rt-oselm", "OS-ELM ridge, one pass (s2rt)", CLOSED_FORM),
    "oselm-rf": ("s2rt-oselm-rf", f"OS-ELM, {RANDOM_FEATURES} random ReLU features (s2rt)", CLOSED_FORM),
}


def _runner(method: str):
    def run(job: Job, context: Any) -> RunResult:
        from s2rt.bundle.model import Optimizer
        from s2rt.data import Samples
        from s2rt.session import Model
        from s2rt.trainer import TrainConfig

        model = Model(context.bundle(job.seed), threads=job.profile.s2rt_threads, method=method)
        config = TrainConfig(
            epochs=job.epochs,
            batch_size=job.batch_size,
            learning_rate=job.lr,
            optimizer=Optimizer.ADAM,
            seed=job.seed,
            **({"lr_schedule": job.schedule} if job.schedule != "constant" else {}),
        )
        samples = Samples(job.train.x, job.train.y)
        start = time.perf_counter()
        result = model.fine_tune(samples, config)
        seconds = time.perf_counter() - start
        accuracy, loss, calibrated = score(model.logits(job.eval.x), job.eval.y)
        report = result.report
        phases = {
            "frozen_forward": result.frozen_seconds,
            "cache_gather": max(report.time_features - result.frozen_seconds, 0.0),
            **step_phases(report),
        }
        phases["other"] = max(seconds - sum(phases.values()), 0.0)
        hit_rate = result.hit_rate if model.method.uses_cache else None
        return RunResult(seconds, accuracy, loss, model.head.num_parameters, phases, hit_rate, calibrated_loss=calibrated)

    return run


# TrainReport's per-batch phase fields: the fused trainer's, then those of runtimes before it
_PHASE_FIELDS = (
    {"decode": "time_decode", "steps": "time_steps"},
    {"head_forward": "time_forward", "backward": "time_backward", "update": "time_update"},
)


def step_phases(report: Any, per: float = 1.0) -> dict[str, float]:
    """The trainer's time split after the feature gather, in whichever fields this runtime reports."""
    for fields in _PHASE_FIELDS:
        if all(hasattr(report, f) for f in fields.values()):
            return {k: getattr(report, f) / per for k, f in fields.items()}
    return {}


def methods() -> list[Method]:
    """The s2rt methods this runtime has (older runtimes: Skip2-LoRA with and without the cache only)."""
    try:
        from s2rt.methods import METHODS
    except ImportError:
        METHODS = {"skip2lora": None, "skiplora": None}
    shared = {"skiplora": "s2rt-skip2lora"}  # the same training as skip2lora, only slower
    return [
        Method(name, label, "s2rt", grid, _runner(m), tune_as=shared.get(m))
        for m, (name, label, grid) in S2RT_METHODS.items()
        if m in METHODS
    ]
