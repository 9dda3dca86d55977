"""Comparison methods (lora-last, ft-last, ft-bias, skiplora): gradients against torch
autograd, fresh heads change nothing, the session and the state file keep methods apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tiny import tiny_bundle, tiny_reference, tiny_weights
from s2rt.bundle import parse_bundle, serialize_bundle, write_bundle
from s2rt.data import Samples
from s2rt.errors import RuntimeInputError, StateError
from s2rt.loss import softmax_cross_entropy
from s2rt.methods import METHODS, BiasHead, LastLayerHead, LastTapLoRAHead, get_method
from s2rt.session import Model
from s2rt.state import load_state, save_adapters
from s2rt.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
SIZES, RANK, ALPHA, CLASSES, N = (7, 4, 9), 3, 6.0, 5, 16


def batch(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, sum(SIZES))).astype(np.float32)
    return X, rng.normal(size=(N, CLASSES)).astype(np.float32), rng.integers(0, CLASSES, N)


def last_tap_heads() -> dict[str, object]:
    """Each last-layer head with non-zero weights, so every gradient path is exercised."""
    rng = np.random.default_rng(0)
    lora = LastTapLoRAHead(SIZES, RANK, ALPHA, CLASSES, rng.normal(size=(RANK, SIZES[-1])).astype(np.float32))
    dense, bias = LastLayerHead(SIZES, CLASSES), BiasHead(SIZES, CLASSES)
    for head in (lora, dense, bias):
        head.load_state_dict({k: rng.normal(scale=0.5, size=v.shape).astype(np.float32) for k, v in head.state_dict().items()})
    return {"lora-last": lora, "ft-last": dense, "ft-bias": bias}


def torch_logits(name: str, weights: dict[str, torch.Tensor], X: np.ndarray, F: np.ndarray) -> torch.Tensor:
    x_last = torch.tensor(X[:, -SIZES[-1] :], dtype=torch.float64)
    f = torch.tensor(F, dtype=torch.float64)
    if name == "lora-last":
        return f + (ALPHA / RANK) * (x_last @ weights["A"].T) @ weights["B"].T
    if name == "ft-last":
        return f + torch.nn.functional.linear(x_last, weights["dW"], weights["db"])
    return f + weights["db"]


@pytest.mark.parametrize("name", ["lora-last", "ft-last", "ft-bias"])
def test_forward_and_gradients_match_torch(name):
    head = last_tap_heads()[name]
    X, F, y = batch()
    weights = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in head.state_dict().items()}
    z_ref = torch_logits(name, weights, X, F)
    torch.nn.functional.cross_entropy(z_ref, torch.tensor(y)).backward()

    z = head.forward(X, F)
    head.backward(softmax_cross_entropy(z, y)[1])

    assert z.dtype == np.float32
    np.testing.assert_allclose(z, z_ref.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(head.delta_logits(X) + F, z, rtol=1e-6, atol=1e-6)
    for key, view in head.dw.items():
        want = weights[key].grad.numpy()
        assert np.abs(want).max() > 1e-3, f"oracle gradient of {key} is trivially zero"
        np.testing.assert_allclose(view, want, rtol=1e-4, atol=1e-6, err_msg=f"d{key}")
    assert head.grads["theta"].size == head.num_parameters


def test_parameter_counts():
    heads = last_tap_heads()
    d_last = SIZES[-1]
    assert heads["lora-last"].num_parameters == RANK * (d_last + CLASSES)
    assert heads["ft-last"].num_parameters == CLASSES * d_last + CLASSES
    assert heads["ft-bias"].num_parameters == CLASSES


@pytest.mark.parametrize("name", list(METHODS))
def test_a_new_head_of_every_method_changes_nothing(name):
    head = get_method(name).make_head(tiny_bundle())  # taps of 6 and 5 features, 3 classes
    rng = np.random.default_rng(4)
    X, F = rng.normal(size=(N, 11)).astype(np.float32), rng.normal(size=(N, 3)).astype(np.float32)
    assert np.array_equal(head.forward(X, F), F)
    assert not head.delta_logits(X).any()


def test_unknown_method_is_named():
    with pytest.raises(RuntimeInputError, match="unknown fine-tuning method 'lora-all'; expected one of: skip2lora, skiplora, lora-last"):
        get_method("lora-all")


def test_ft_last_is_fine_tuning_the_last_layer():
    w = tiny_weights()
    model = Model(parse_bundle(serialize_bundle(tiny_bundle(w))[0]), method="ft-last")
    rng = np.random.default_rng(5)
    dW, db = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    model.head.load_state_dict({"dW": dW, "db": db})
    x = rng.normal(size=(8, 6)).astype(np.float32)
    taps, _ = tiny_reference(w, x)
    hidden = taps[:, 6:]
    np.testing.assert_allclose(model.logits(x), hidden @ (w["W1"] + dW.T) + (w["b1"] + db), rtol=1e-5, atol=1e-5)


# --- the session and the state file ----------------------------------------------------------


def tiny_model(method: str = "skip2lora") -> Model:
    return Model(parse_bundle(serialize_bundle(tiny_bundle(tiny_weights()))[0]), method=method)


def samples(n: int = 96) -> Samples:
    x = np.random.default_rng(3).normal(size=(n, 6)).astype(np.float32)
    return Samples(x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5))


CONFIG = TrainConfig(epochs=6, batch_size=16, learning_rate=0.05, seed=1)


@pytest.mark.parametrize("name", ["lora-last", "ft-last", "ft-bias"])
def test_last_layer_methods_train_from_the_cache_and_lower_the_loss(name):
    model, data = tiny_model(), samples()
    result = model.fine_tune(data, CONFIG, method=name)
    assert model.method.name == name and model.head.num_parameters == get_method(name).make_head(model.bundle).num_parameters
    assert (result.cache_misses, result.cache_hits) == (96, 5 * 96)
    losses = [e["train_loss"] for e in result.report.history]
    assert losses[-1] < losses[0]


def test_skiplora_is_skip2lora_without_the_cache():
    data = samples()
    cached, uncached = tiny_model(), tiny_model()
    cached.fine_tune(data, CONFIG)
    result = uncached.fine_tune(data, CONFIG, method="skiplora")
    assert (result.cache_misses, result.cache_hits) == (6 * 96, 0)
    for name, array in cached.head.state_dict().items():
        np.testing.assert_array_equal(array, uncached.head.state_dict()[name])


@pytest.mark.parametrize("name", list(METHODS))
def test_state_round_trip_records_the_method(name, tmp_path):
    model = tiny_model()
    model.fine_tune(samples(), CONFIG, method=name)
    model.save_adapters(tmp_path / "a.npz", metrics={"n": 96})
    arrays, meta = load_state(tmp_path / "a.npz", model.bundle)
    assert meta["method"] == name and meta["metrics"] == {"n": 96}
    again = tiny_model()
    again.load_adapters(tmp_path / "a.npz")  # takes on the file's method
    assert again.method.family == get_method(name).family
    x = samples(8).x
    np.testing.assert_array_equal(again.logits(x), model.logits(x))


def test_a_file_of_another_method_is_refused_with_a_clear_message(tmp_path):
    model = tiny_model("ft-bias")
    model.save_adapters(tmp_path / "bias.npz")
    with pytest.raises(StateError, match=r"bias\.npz: holds ft-bias state, which --method lora-last cannot load; .* --method ft-bias"):
        tiny_model().load_adapters(tmp_path / "bias.npz", "lora-last")
    with pytest.raises(StateError, match="holds ft-bias state"):
        Model.open(write(tmp_path, model), adapters=tmp_path / "bias.npz", method="skip2lora")


def test_skip2lora_and_skiplora_files_are_interchangeable_and_old_files_are_skip2lora(tmp_path):
    model = tiny_model()
    model.fine_tune(samples(), CONFIG, method="skiplora")
    model.save_adapters(tmp_path / "skiplora.npz")
    tiny_model().load_adapters(tmp_path / "skiplora.npz", "skip2lora")
    legacy = tiny_model()
    save_adapters(tmp_path / "old.npz", model.head.per_tap(), model.bundle)  # the pre-method API
    _, meta = load_state(tmp_path / "old.npz", model.bundle)
    assert meta["method"] == "skip2lora"
    legacy.load_adapters(tmp_path / "old.npz", "skiplora")


def test_state_arrays_of_the_wrong_shape_name_the_file(tmp_path):
    model = tiny_model("ft-last")
    model.save_adapters(tmp_path / "a.npz")
    arrays, meta = load_state(tmp_path / "a.npz", model.bundle)
    from s2rt.state import save_state

    save_state(tmp_path / "bad.npz", {"dW": arrays["dW"][:, :-1], "db": arrays["db"]}, model.bundle, "ft-last")
    with pytest.raises(StateError, match=r"bad\.npz: adapter state array dW: expected shape \(3, 5\), found \(3, 4\)"):
        tiny_model().load_adapters(tmp_path / "bad.npz")


# --- the CLI ---------------------------------------------------------------------------------


def write(folder: Path, model: Model) -> Path:
    path = folder / "tiny.s2l"
    if not path.exists():
        write_bundle(tiny_bundle(tiny_weights()), path)
    return path


def s2rt(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}
    return subprocess.run([sys.executable, "-m", "s2rt", *map(str, args)], capture_output=True, text=True, env=env, timeout=120)


def test_cli_trains_every_method_and_refuses_a_mismatched_init(tmp_path):
    bundle = write(tmp_path, tiny_model())
    data = samples()
    np.savez(tmp_path / "d.npz", x=data.x, y=data.y)
    counts = {}
    for name in METHODS:
        out = s2rt("train", bundle, "--data", tmp_path / "d.npz", "--epochs", 2, "--method", name, "-o", tmp_path / f"{name}.npz", "--json")
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["method"] == name and result["cache"] == (name != "skiplora")
        counts[name] = result["trainable_parameters"]
        evaluated = s2rt("eval", bundle, "--adapters", tmp_path / f"{name}.npz", "--data", tmp_path / "d.npz", "--json")
        assert evaluated.returncode == 0, evaluated.stderr
    assert counts == {
        "skip2lora": 2 * 11 + 3 * 2 * 2,
        "skiplora": 34,
        "lora-last": 2 * (5 + 3),
        "ft-last": 3 * 5 + 3,
        "ft-bias": 3,
        "skip2relu": 32 * 11 + 2 * 32 + 3 * 2 * 32,  # A, c, B (r = 32)
        "oselm": (11 + 1) * 3,  # beta over [u, 1]
        "oselm-rf": (11 + 1 + 256) * 3,
    }
    bad = s2rt(
        "train", bundle, "--data", tmp_path / "d.npz", "--method", "ft-last", "--init", tmp_path / "ft-bias.npz", "-o", tmp_path / "x.npz"
    )
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "holds ft-bias state, which --method ft-last cannot load" in bad.stderr
