"""Fleet settings swept fast: the rounds of s2fleet.simulate without Flower, one process.

    .venv-fleet/bin/python bench/fleet_sweep.py '{"devices": [100], "local_epochs": [5, 20], "learning_rate": [0.01, 0.03]}'

Every combination of the grid's values (JSON: a FleetRun field or `batch_size`,
`optimizer` (sgd, adam), `server`, `momentum` -> a list) runs `rounds` rounds and prints the global adapters' accuracy on
HAR's shifted test split after each. tests/fleet/test_simulation.py checks that these
rounds give the adapters Flower's rounds give, so a sweep here stands for a simulation
(without Ray's start-up and per-message cost: a second, not tens of seconds, per run).

`server` adds server optimizers on the averaged dW (FedOpt, Reddi et al. 2021), measured
here and not kept in the product (they did not help on HAR, see the README's fleet
section): `sgd` (dW <- dW + step * (avg - dW), the product's damped/exact), `momentum`
(FedAvgM: a velocity with factor `momentum`), `adam` (FedAdam, betas 0.9/0.99, tau 1e-3).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT / "converter"), str(ROOT / "fleet"), str(ROOT / "bench")]

from fleet_bench import DATA, make_bundle  # noqa: E402
from s2fleet import ridge  # noqa: E402
from s2fleet.aggregate import delta, refactor, weights  # noqa: E402
from s2fleet.device import global_accuracy, local_update  # noqa: E402
from s2fleet.partition import partition  # noqa: E402
from s2fleet.simulate import Data, initial_adapters, load_data  # noqa: E402
from s2rt.data import Samples  # noqa: E402
from s2rt.session import Model  # noqa: E402


def server_step(kind: str, step: float, momentum: float, state: dict[str, Any], current: list, pseudo: list) -> list:
    """The next global dW per tap from the averaged change `pseudo` (avg - current)."""
    if kind == "sgd":
        return [g + step * p for g, p in zip(current, pseudo)]
    if kind == "momentum":
        state["v"] = [momentum * v + p for v, p in zip(state.get("v", [0 * p for p in pseudo]), pseudo)]
        return [g + step * v for g, v in zip(current, state["v"])]
    if kind == "adam":
        state["m"] = [0.9 * m + 0.1 * p for m, p in zip(state.get("m", [0 * p for p in pseudo]), pseudo)]
        state["s"] = [0.99 * s + 0.01 * p * p for s, p in zip(state.get("s", [0 * p for p in pseudo]), pseudo)]
        return [g + step * m / (np.sqrt(s) + 1e-3) for g, m, s in zip(current, state["m"], state["s"])]
    raise ValueError(f"server: expected sgd, momentum or adam, got {kind!r}")


def rounds(model: Model, data: Data, settings: dict[str, Any]) -> list[float]:
    s = {
        "devices": 100,
        "partition": "shards",
        "rounds": 5,
        "local_epochs": 5,
        "learning_rate": 0.01,
        "logit_adjustment": 0.0,
        "batch_size": None,
        "optimizer": None,
        "start": "adapters",
        "server": "sgd",
        "step": 1.0,
        "momentum": 0.9,
        "seed": 0,
        **settings,
    }
    head, rank = model.head, model.bundle.head.rank
    parts = partition(s["partition"], data.y, s["devices"], s["seed"])
    current = initial_adapters(model)
    first = 1
    if s["start"] == "ridge":
        sums = [ridge.split_statistics(model, Samples(data.x[i], data.y[i])) for i in parts]
        dw, _ = ridge.fit_chosen([s[0] for s in sums], [s[1] for s in sums], head.tap_width)  # type: ignore[attr-defined]
        current = ridge.to_adapters(dw, head.tap_sizes, rank, head.scaling)  # type: ignore[attr-defined]
        first = 2
    curve = [global_accuracy(model, initial_adapters(model), data.test_x, data.test_y)]
    if first == 2:
        curve.append(global_accuracy(model, current, data.test_x, data.test_y))
    state: dict[str, Any] = {}
    for r in range(first, s["rounds"] + 1):
        updates = [
            local_update(
                model,
                Samples(data.x[i], data.y[i]),
                current,
                s["local_epochs"],
                s["learning_rate"],
                seed=r * 1000 + k,
                logit_adjustment=s["logit_adjustment"],
                batch_size=s["batch_size"],
                optimizer=s["optimizer"],
            )
            for k, i in enumerate(parts)
        ]
        w = weights(updates)
        per_device = [delta(u.adapters) for u in updates]
        average = [sum(wk * d[t] for wk, d in zip(w, per_device)) for t in range(len(current))]
        now = delta(current)
        target = server_step(s["server"], s["step"], s["momentum"], state, now, [a - g for a, g in zip(average, now)])
        current = [refactor(dw, rank) for dw in target]
        curve.append(global_accuracy(model, current, data.test_x, data.test_y))
    return curve


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    grid: dict[str, list[Any]] = json.loads(argv[0])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        model = Model.open(make_bundle(Path(tmp)))
        data = load_data(DATA / "har_ft.npz", DATA / "har_test.npz", model)
        for values in itertools.product(*grid.values()):
            settings = dict(zip(grid, values))
            started = time.perf_counter()
            curve = rounds(model, data, settings)
            print(json.dumps(settings), " ".join(f"{a:.3f}" for a in curve), f"({time.perf_counter() - started:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
