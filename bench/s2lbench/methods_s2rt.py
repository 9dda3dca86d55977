"""s2rt methods, through the library API: s2conv.convert -> s2rt.session.Model.fine_tune.

The bundle is converted once per (workload, seed) outside the timed region (the seed
draws the adapters' initial A); the timed region is `Model.fine_tune`, which hashes the
samples, fills the Skip-Cache on first sight and trains the head.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

from s2lbench.methods import ADAPTER_GRID, Job, Method, RunResult, score

FINE_TUNE_METHODS_MODULE = "s2rt.methods"  # issue 5's last-layer methods, when present


def _skip2lora(use_cache: bool):
    def run(job: Job, context: Any) -> RunResult:
        from s2rt.bundle.model import Optimizer
        from s2rt.data import Samples
        from s2rt.session import Model
        from s2rt.trainer import TrainConfig

        model = Model(context.bundle(job.seed), threads=job.profile.s2rt_threads)
        config = TrainConfig(epochs=job.epochs, batch_size=job.batch_size, learning_rate=job.lr, optimizer=Optimizer.ADAM, seed=job.seed)
        samples = Samples(job.train.x, job.train.y)
        start = time.perf_counter()
        result = model.fine_tune(samples, config, use_cache=use_cache)
        seconds = time.perf_counter() - start
        accuracy, loss = score(model.logits(job.eval.x), job.eval.y)
        report = result.report
        phases = {
            "frozen_forward": result.frozen_seconds,
            "cache_gather": max(report.time_features - result.frozen_seconds, 0.0),
            "head_forward": report.time_forward,
            "backward": report.time_backward,
            "update": report.time_update,
        }
        phases["other"] = max(seconds - sum(phases.values()), 0.0)
        return RunResult(seconds, accuracy, loss, model.head.num_parameters, phases, result.hit_rate if use_cache else None)

    return run


def methods() -> list[Method]:
    out = [
        Method("s2rt-skip2lora", "Skip2-LoRA (s2rt)", "s2rt", ADAPTER_GRID, _skip2lora(use_cache=True)),
        Method("s2rt-skip2lora-nocache", "Skip2-LoRA, no cache (s2rt)", "s2rt", ADAPTER_GRID, _skip2lora(use_cache=False)),
    ]
    if importlib.util.find_spec(FINE_TUNE_METHODS_MODULE) is not None:
        from s2lbench.methods_s2rt_last import methods as last_layer_methods

        out += last_layer_methods()
    return out
