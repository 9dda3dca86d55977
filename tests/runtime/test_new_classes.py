"""New classes on the device (`s2rt.heads.grown`): the grown head against torch autograd,
adapter files that carry the new labels, the CLI end to end, refusal without the flag,
and the reference open-set workload (models/har_open_mlp.onnx: HAR without TRAP and ROW)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tiny import tiny_bundle
from s2rt import Model
from s2rt.bundle import write_bundle
from s2rt.errors import RuntimeInputError, StateError
from s2rt.head import AdapterHead
from s2rt.heads.grown import GrownHead, grow, pad_logits
from s2rt.loss import softmax_cross_entropy
from s2rt.state import load_adapters, save_state

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("runtime", "converter"))}
OLD = ("class_0", "class_1", "class_2")  # the tiny bundle's labels


def grown_head(sizes=(7, 4, 9), rank=3, old=5, extra=2, seed=0) -> GrownHead:
    rng = np.random.default_rng(seed)
    a_init = [rng.normal(size=(rank, d)).astype(np.float32) for d in sizes]
    base = AdapterHead(sizes, rank, 2.0 * rank, old + extra, a_init)
    base.load_per_tap([(a, rng.normal(scale=0.5, size=(old + extra, rank)).astype(np.float32)) for a in a_init])
    head = GrownHead(base, old)
    head.load_state_dict(
        base.state_dict()
        | {"new.W": rng.normal(scale=0.3, size=(extra, sizes[-1])).astype(np.float32), "new.b": rng.normal(size=extra).astype(np.float32)}
    )
    return head


@pytest.mark.parametrize(
    ("sizes", "rank", "old", "extra", "n"), [((7, 4, 9), 3, 5, 2, 16), ((5,), 1, 2, 1, 3), ((48, 96, 96), 4, 5, 2, 32)]
)
def test_grown_head_forward_and_gradients_match_torch(sizes, rank, old, extra, n):
    head = grown_head(sizes, rank, old, extra)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, sum(sizes))).astype(np.float32)
    F = rng.normal(size=(n, old)).astype(np.float32)
    y = rng.integers(0, old + extra, n)
    y[0] = old + extra - 1  # a new class is in the batch

    state = head.state_dict()
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in state.items()}
    xs = torch.split(torch.tensor(X, dtype=torch.float64), list(sizes), dim=1)
    delta = head.base.scaling * sum(x @ t[f"A.{i}"].T @ t[f"B.{i}"].T for i, x in enumerate(xs))
    frozen = torch.cat([torch.tensor(F, dtype=torch.float64), xs[-1] @ t["new.W"].T + t["new.b"]], dim=1)
    z_ref = frozen + delta
    loss_ref = torch.nn.functional.cross_entropy(z_ref, torch.tensor(y))
    loss_ref.backward()

    z = head.forward(X, pad_logits(F, old + extra))
    loss, dz = softmax_cross_entropy(z, y)
    head.backward(dz)

    np.testing.assert_allclose(z, z_ref.detach().numpy(), rtol=1e-5, atol=1e-4)
    assert loss == pytest.approx(loss_ref.item(), rel=1e-5)
    np.testing.assert_allclose(head.delta_logits(X) + pad_logits(F, old + extra), z, rtol=1e-5, atol=1e-5)
    grads = dict(zip(state, (None,) * len(state)))
    for i, (da, db) in enumerate(head.base.per_tap(grad=True)):
        grads[f"A.{i}"], grads[f"B.{i}"] = da, db
    grads["new.W"], grads["new.b"] = head.grads["new"][:, :-1], head.grads["new"][:, -1]
    for name, g in grads.items():
        ref = t[name].grad.numpy()
        assert np.abs(ref).max() > 1e-3, f"oracle gradient of {name} is trivially zero"
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max(), err_msg=name)


def test_pinned_head_trains_only_the_new_rows():
    """Stage 2 of `train_grown`: A and the old rows of B get no gradient; the new rows get torch's."""
    head = grown_head((7, 4, 9), 3, 5, 2)
    rng = np.random.default_rng(4)
    X = rng.normal(size=(16, head.tap_width)).astype(np.float32)
    F = rng.normal(size=(16, 5)).astype(np.float32)
    y = rng.integers(0, 7, 16)
    _, dz = softmax_cross_entropy(head.forward(X, pad_logits(F, 7)), y)
    head.backward(dz)
    free = [(da.copy(), db.copy()) for da, db in head.base.per_tap(grad=True)]
    head.pinned = True
    head.forward(X, pad_logits(F, 7))
    head.backward(dz)
    for (da, db), (free_da, free_db) in zip(head.base.per_tap(grad=True), free):
        assert not da.any() and not db[:5].any()
        np.testing.assert_array_equal(db[5:], free_db[5:])
        assert free_da.any() and free_db[:5].any()


def test_old_classes_train_as_without_the_new_then_stay_pinned(bundle_path):
    """`train_grown`: stage 1 is the plain fine-tune on the old-class samples (same seed, same
    numbers), stage 2 leaves the old classes' logits exactly there."""
    x, y = novel_data()
    plain = Model.open(bundle_path)
    old = y != "novel"
    plain.fine_tune(plain.samples(x[old], y[old]), epochs=5, learning_rate=0.05, seed=3)
    model = Model.open(bundle_path)
    model.fine_tune(model.samples(x, y, allow_new_classes=True), epochs=5, learning_rate=0.05, seed=3)
    test = novel_data(seed=1)[0]
    np.testing.assert_allclose(model.logits(test)[:, :3], plain.logits(test), rtol=1e-5, atol=1e-5)
    assert np.abs(model.logits(test)[:, 3]).max() > 0.1  # the new row learned


def test_progress_runs_once_over_both_stages(bundle_path):
    """A bar or a daemon job sees epochs 1..2E in order; epoch ends and close come from stage 2 only."""

    class Recorder:
        def __init__(self):
            self.batches, self.ends, self.closed = [], [], 0

        def __call__(self, epoch, epochs, batch, batches, loss):
            self.batches.append((epoch, epochs))

        def epoch_end(self, epoch, epochs, metrics):
            self.ends.append((epoch, epochs))

        def close(self):
            self.closed += 1

    model = Model.open(bundle_path)
    recorder = Recorder()
    model.fine_tune(model.samples(*novel_data(), allow_new_classes=True), epochs=3, progress=recorder)
    assert [e for e, _ in recorder.batches] == sorted(e for e, _ in recorder.batches)
    assert {e for e, _ in recorder.batches} == {1, 2, 3, 4, 5, 6} and {n for _, n in recorder.batches} == {6}
    assert recorder.ends == [(4, 6), (5, 6), (6, 6)] and recorder.closed == 1


def test_growing_keeps_trained_adapters_and_new_rows():
    head = grown_head(old=5, extra=1)
    bigger = grow(head, 5, 3)
    X = np.random.default_rng(2).normal(size=(4, head.tap_width)).astype(np.float32)
    np.testing.assert_allclose(bigger.delta_logits(X)[:, :6], head.delta_logits(X), rtol=1e-6, atol=1e-6)
    assert bigger.num_outputs == 8 and not bigger.parameters()["new"][1:].any()


def novel_data(n=240, seed=0):
    """Tiny-bundle inputs from four well-separated clusters; the fourth is a class the bundle lacks."""
    centres = np.random.default_rng(99).normal(scale=3.0, size=(4, 6))
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = (centres[y] + rng.normal(scale=0.5, size=(n, 6))).astype(np.float32)
    return x, np.array([*OLD, "novel"])[y]


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("new_classes") / "tiny.s2l"
    write_bundle(tiny_bundle(), path)
    return path


def test_unknown_labels_are_refused_without_the_flag(bundle_path):
    model = Model.open(bundle_path)
    x, y = novel_data()
    with pytest.raises(RuntimeInputError, match=r"\['novel'\].*--allow-new-classes.*allow_new_classes=True"):
        model.samples(x, y)
    assert model.labels == OLD and model.new_labels == ()


def test_new_label_names_are_bounded(bundle_path):
    model = Model.open(bundle_path)
    x, _ = novel_data(n=2)
    with pytest.raises(RuntimeInputError, match="new class name 'zzzz.*must be a string of 1..200 characters"):
        model.samples(x, ["class_0", "z" * 201], allow_new_classes=True)
    assert model.labels == OLD


def test_new_class_is_learned_and_round_trips_through_the_adapter_file(bundle_path, tmp_path):
    model = Model.open(bundle_path)
    x, y = novel_data()
    samples = model.samples(x, y, allow_new_classes=True)
    assert model.labels == (*OLD, "novel") and samples.y.max() == 3
    model.fine_tune(samples, epochs=30, learning_rate=0.05)
    result = model.evaluate(model.samples(*novel_data(seed=1)))
    assert result["new_class_recall"]["novel"] >= 0.9 and result["accuracy"] >= 0.9, result
    probs = model.predict_proba(x[:10])
    assert probs.shape == (10, 4) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)

    model.save_adapters(tmp_path / "a.npz")
    again = Model.open(bundle_path, adapters=tmp_path / "a.npz")
    assert again.labels == (*OLD, "novel")
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    assert "novel" in set(again.predict(x))
    with pytest.raises(StateError, match=r"add classes \['novel'\].*Model.open\(\.\.\., adapters=\.\.\.\)\) or s2conv export"):
        load_adapters(tmp_path / "a.npz", again.bundle)  # the plain (A, B) form has no room for the new rows


def test_adapters_with_a_new_class_grow_again_from_the_file(bundle_path, tmp_path):
    model = Model.open(bundle_path)
    model.fine_tune(model.samples(*novel_data(), allow_new_classes=True), epochs=30, learning_rate=0.05)
    model.save_adapters(tmp_path / "a.npz")
    again = Model.open(bundle_path, adapters=tmp_path / "a.npz")
    x = novel_data(seed=1)[0]
    before = again.logits(x)
    again.samples(x[:2], ["novel", "zebra"], allow_new_classes=True)
    assert again.labels == (*OLD, "novel", "zebra")
    np.testing.assert_allclose(again.logits(x)[:, :4], before, rtol=1e-5, atol=1e-5)  # the trained rows carry over


def test_new_classes_need_skip2lora(bundle_path):
    model = Model.open(bundle_path)
    samples = model.samples(*novel_data(), allow_new_classes=True)
    with pytest.raises(RuntimeInputError, match="need --method skip2lora, not oselm"):
        model.fine_tune(samples, method="oselm")


def test_adapter_file_with_clashing_new_labels_is_refused(bundle_path, tmp_path):
    model = Model.open(bundle_path)
    model.samples(*novel_data(), allow_new_classes=True)
    save_state(tmp_path / "a.npz", model.head.state_dict(), model.bundle, "skip2lora", new_labels=["class_1"])  # a forged meta
    with pytest.raises(StateError, match="clash with the bundle's labels"):
        Model.open(bundle_path, adapters=tmp_path / "a.npz")


def s2rt(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "s2rt", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=120)


def test_cli_train_with_new_classes_then_eval_and_predict(bundle_path, tmp_path):
    x, y = novel_data()
    np.savez(tmp_path / "ft.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=novel_data(seed=1)[0], y=novel_data(seed=1)[1])

    refused = s2rt("train", bundle_path, "--data", tmp_path / "ft.npz", "-o", tmp_path / "a.npz")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "ft.npz" in refused.stderr and "['novel']" in refused.stderr and "--allow-new-classes" in refused.stderr

    train = s2rt(
        "train",
        bundle_path,
        "--data",
        tmp_path / "ft.npz",
        "-o",
        tmp_path / "a.npz",
        "--allow-new-classes",
        "--epochs",
        "30",
        "--lr",
        "0.05",
        "--json",
    )
    assert train.returncode == 0, train.stderr
    assert json.loads(train.stdout)["new_labels"] == ["novel"]

    ev = s2rt("eval", bundle_path, "--data", tmp_path / "test.npz", "--adapters", tmp_path / "a.npz", "--json")
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["new_class_recall"]["novel"] >= 0.9 and result["old_class_accuracy"] >= 0.9, result
    text = s2rt("eval", bundle_path, "--data", tmp_path / "test.npz", "--adapters", tmp_path / "a.npz")
    assert "new classes: recall novel" in text.stdout

    pred = s2rt("predict", bundle_path, "--data", tmp_path / "test.npz", "--adapters", tmp_path / "a.npz", "--json")
    rows = json.loads(pred.stdout)["predictions"]
    assert {r["label"] for r in rows} == {*OLD, "novel"} and all(len(r["probabilities"]) == 4 for r in rows)


@pytest.mark.parametrize("seed", [0, 2])
def test_reference_open_set_workload_keeps_old_classes_and_learns_the_new(tmp_path, seed):
    """models/har_open_mlp.onnx never saw TRAP and ROW; the device's ft data has them by name.
    Seed 2 lost 3.7 points on the old classes when everything trained jointly."""
    from s2conv.convert import convert

    labels = tuple((ROOT / "models/data/har_open_labels.txt").read_text().split())
    convert(ROOT / "models/har_open_mlp.onnx", output=tmp_path / "b.s2l", labels=labels)
    ft, test = (np.load(ROOT / f"models/data/har_open_{s}.npz", allow_pickle=False) for s in ("ft", "test"))
    assert {"TRAP", "ROW"} <= set(ft["y"]) and not {"TRAP", "ROW"} & set(labels)
    old_ft, old_test = np.isin(ft["y"], labels), np.isin(test["y"], labels)

    before = Model.open(tmp_path / "b.s2l")  # the model before the classes were added: fine-tuned on the old classes
    before.fine_tune(before.samples(ft["x"][old_ft], ft["y"][old_ft]), seed=seed)
    acc_before = before.evaluate(before.samples(test["x"][old_test], test["y"][old_test]))["accuracy"]

    model = Model.open(tmp_path / "b.s2l")
    model.fine_tune(model.samples(ft["x"], ft["y"], allow_new_classes=True), seed=seed)
    result = model.evaluate(model.samples(test["x"], test["y"]))
    assert model.new_labels == ("ROW", "TRAP")
    assert min(result["new_class_recall"].values()) >= 0.9, result
    assert result["old_class_accuracy"] >= acc_before - 0.01, (result, acc_before)
    predicted = model.classify(test["x"][old_test])[0]
    assert np.mean(predicted >= len(labels)) < 0.01  # old-class samples are not taken by the new classes
