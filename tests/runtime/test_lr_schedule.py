"""TrainConfig.lr_schedule: cosine decays the learning rate per epoch; a bad name is refused; the CLI passes it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import s2rt.trainer as trainer
from helpers.tiny import tiny_bundle, tiny_weights
from s2rt.bundle import write_bundle
from s2rt.data import Samples
from s2rt.errors import RuntimeInputError
from s2rt.session import Model
from s2rt.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def samples(n=64):
    rng = np.random.default_rng(0)
    return Samples(rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, n))


@pytest.mark.parametrize(
    ("schedule", "factors"),
    [("constant", [1, 1, 1, 1]), ("cosine", [1, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))])],
)
def test_each_epoch_steps_at_the_scheduled_rate(monkeypatch, schedule, factors):
    seen: list[float] = []
    make = trainer.make_optimizer

    def spy(kind, params, lr):
        optimizer = make(kind, params, lr)
        step = optimizer.step

        def recording(grads):
            seen.append(optimizer.lr)
            step(grads)

        optimizer.step = recording  # type: ignore[method-assign]
        return optimizer

    monkeypatch.setattr(trainer, "make_optimizer", spy)
    model = Model(tiny_bundle(tiny_weights()), method="skip2relu")
    model.fine_tune(samples(), TrainConfig(epochs=4, batch_size=32, learning_rate=0.02, lr_schedule=schedule))
    assert len(seen) == 4 * 2
    np.testing.assert_allclose(seen, [0.02 * f for f in factors for _ in range(2)], rtol=1e-12)


def test_an_unknown_schedule_is_named():
    with pytest.raises(RuntimeInputError, match=r"TrainConfig.lr_schedule must be constant or cosine, got 'linear'"):
        TrainConfig(lr_schedule="linear")


def test_cli_trains_skip2relu_with_a_cosine_schedule_and_oselm_in_closed_form(tmp_path):
    write_bundle(tiny_bundle(tiny_weights()), tmp_path / "b.s2l")
    data = samples(96)
    np.savez(tmp_path / "d.npz", x=data.x, y=data.y)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}

    def s2rt(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "s2rt", *map(str, args)], capture_output=True, text=True, env=env, timeout=120)

    out = s2rt(
        "train",
        tmp_path / "b.s2l",
        "--data",
        tmp_path / "d.npz",
        "--method",
        "skip2relu",
        "--lr-schedule",
        "cosine",
        "-o",
        tmp_path / "r.npz",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["epochs"] == 20
    out = s2rt("train", tmp_path / "b.s2l", "--data", tmp_path / "d.npz", "--method", "oselm", "-o", tmp_path / "o.npz", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "trained 1 epochs" in out.stdout and "closed form: kappa=" in out.stdout
    bad = s2rt("train", tmp_path / "b.s2l", "--data", tmp_path / "d.npz", "--lr-schedule", "step", "-o", tmp_path / "x.npz")
    assert bad.returncode != 0 and "--lr-schedule" in bad.stderr


@pytest.mark.parametrize("method", ["skip2lora", "skip2relu", "ft-last"])
@pytest.mark.parametrize("optimizer", ["ADAM", "SGD"])
def test_the_cosine_rate_is_the_one_the_steps_use(method, optimizer):
    """Cosine gives other weights than a constant rate (the fused loop plans every step's
    constants up front: a new rate must reach them; test_optim checks the steps against torch)."""
    config = {"epochs": 3, "batch_size": 32, "learning_rate": 0.05, "optimizer": optimizer, "shuffle": False}
    trained = {}
    for schedule in ("constant", "cosine"):
        model = Model(tiny_bundle(tiny_weights()), method=method)
        model.fine_tune(samples(), TrainConfig(**config, lr_schedule=schedule))
        trained[schedule] = np.concatenate([p.ravel() for p in model.head.parameters().values()])
    assert not np.allclose(trained["constant"], trained["cosine"], rtol=1e-4, atol=1e-6)
