"""Fleet learning through Flower's Simulation Engine (Ray), on the HAR model: the rounds that
Flower runs give the adapters that the same rounds give without Flower, a device on another
bundle refuses every round without stopping the others, and the fleet learns.

Needs the fleet extra (flwr[simulation]): `make test` runs it in .venv-fleet."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
from s2conv import ConvertOptions, convert
from s2fleet import ridge
from s2fleet.aggregate import Aggregation, aggregate, delta
from s2fleet.device import global_accuracy, local_update
from s2fleet.partition import partition
from s2fleet.simulate import Data, FleetRun, federated, initial_adapters, load_data
from s2rt.bundle import write_bundle
from s2rt.data import Samples
from s2rt.session import Model

# Ray's own start-up leaves files and processes to its log monitor and warns about a future
# default, and flwr's import calls click functions that click now deprecates; as errors (the
# suite's setting) they stop Flower or Ray mid-start and the run hangs or fails.
pytestmark = pytest.mark.filterwarnings(
    "ignore::ResourceWarning",
    "ignore:Tip. In future versions of Ray:FutureWarning",
    "ignore:'click\\.utils\\..*' is deprecated:DeprecationWarning",
)

MODELS = Path(__file__).resolve().parents[2] / "models"
DEVICES, ROUNDS, EPOCHS = 4, 2, 2


@cache
def bundles(tmp: Path) -> tuple[str, str]:
    served, other = tmp / "har_r8.s2l", tmp / "har_r4.s2l"
    write_bundle(convert(MODELS / "har_mlp.onnx", ConvertOptions(rank=8)), served)
    write_bundle(convert(MODELS / "har_mlp.onnx", ConvertOptions(rank=4)), other)
    return str(served), str(other)


def subset(data: Data, n: int) -> Data:
    keep = np.random.default_rng(0).permutation(len(data.y))[:n]
    return Data(data.x[keep], data.y[keep], data.test_x, data.test_y)


def without_flower(run: FleetRun, data: Data, skip: int) -> list:
    """The same rounds in one process: device k trains with seed round * 1000 + k; a ridge
    start fits the devices' sums (test_ridge: they give the fit of all samples in one place)."""
    model = Model.open(run.bundle)
    parts = partition(run.partition, data.y, run.devices, run.seed)
    current = initial_adapters(model)
    if run.start == "ridge":
        head = model.head
        sums = [ridge.split_statistics(model, Samples(data.x[i], data.y[i])) for k, i in enumerate(parts) if k != skip]
        dw, _ = ridge.fit_chosen([s[0] for s in sums], [s[1] for s in sums], head.tap_width)  # type: ignore[attr-defined]
        current = ridge.to_adapters(dw, head.tap_sizes, head.rank, head.scaling)  # type: ignore[attr-defined]
    for r in range(2 if run.start == "ridge" else 1, run.rounds + 1):
        updates = [
            local_update(
                model,
                Samples(data.x[i], data.y[i]),
                current,
                run.local_epochs,
                run.learning_rate,
                seed=r * 1000 + k,
                logit_adjustment=run.logit_adjustment,
            )
            for k, i in enumerate(parts)
            if k != skip
        ]
        current = aggregate(Aggregation(run.aggregation), updates, model.bundle.head.rank, current, run.step)
    return current


RUNS = {
    "exact": {},
    "ridge-then-logit-adjusted": {"start": "ridge", "logit_adjustment": 1.0},  # round 1 closed form, round 2 trains
}


@pytest.mark.parametrize("options", RUNS.values(), ids=RUNS.keys())
def test_flower_rounds_match_the_same_rounds_without_flower(tmp_path_factory, options):
    served, other = bundles(tmp_path_factory.mktemp("fleet"))
    model = Model.open(served)
    data = subset(load_data(MODELS / "data" / "har_ft.npz", MODELS / "data" / "har_test.npz", model), 400)
    run = FleetRun(served, DEVICES, "shards", "exact", ROUNDS, EPOCHS, **options)
    stale = 1  # this device serves another bundle
    out = federated(run, data, device_bundles=[other if k == stale else served for k in range(DEVICES)])

    assert len(out["refused"]) == ROUNDS and all("refused: the round is for bundle" in r for r in out["refused"])
    expected = without_flower(run, data, skip=stale)
    for got, want in zip(delta(out["adapters"]), delta(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    curve = out["curve"]
    assert len(curve) == ROUNDS + 1
    assert curve[0] == pytest.approx(global_accuracy(model, initial_adapters(model), data.test_x, data.test_y))
    assert curve[-1] > curve[0] + 0.02  # the fleet learned from its devices
    assert out["device_peak_rss_mb"] > 10 and len(out["round_seconds"]) == ROUNDS
