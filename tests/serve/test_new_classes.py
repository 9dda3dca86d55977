"""New classes in the daemon (`s2rt serve --allow-new-classes`), on a real server process:
samples that name classes the bundle lacks are refused by default and stored as new
classes when allowed; a job grows the head; the served labels (/v1/model, predict,
OpenAPI) follow the active version, also through rollback and a restart."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from helpers.daemon import wait_job
from helpers.keys import test_key
from s2rt.bundle import write_bundle
from s2rt.serve.gate import VAL_FRACTION, held_out
from s2rt.session import Model

MODELS = Path(__file__).resolve().parents[2] / "models"
OLD = tuple((MODELS / "data" / "har_open_labels.txt").read_text().split())  # HAR without TRAP and ROW


@pytest.fixture(scope="module")
def open_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from s2conv import ConvertOptions, convert

    path = tmp_path_factory.mktemp("har_open") / "har_open.s2l"
    write_bundle(convert(MODELS / "har_open_mlp.onnx", ConvertOptions(labels=OLD)), path)
    return path


@pytest.fixture(scope="module")
def open_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ft, test = (np.load(MODELS / "data" / f"har_open_{s}.npz", allow_pickle=False) for s in ("ft", "test"))
    return ft["x"].astype(np.float32), ft["y"], test["x"].astype(np.float32), test["y"]


def first_seen(names: np.ndarray) -> tuple[str, ...]:
    """The new class names in the order they first appear: the daemon numbers them so."""
    return tuple(dict.fromkeys(n for n in names.tolist() if n not in OLD))


def test_unknown_label_names_are_refused_without_the_flag(serve, open_bundle, open_data):
    x, y, _, _ = open_data
    d = serve(str(open_bundle))
    new = int(np.flatnonzero(~np.isin(y, OLD))[0])
    r = d.client.post("/v1/samples", json={"x": x[: new + 1].tolist(), "y": y[: new + 1].tolist()})
    assert r.status_code == 422 and r.json()["field"] == f"y[{new}]"
    assert repr(str(y[new])) in r.json()["message"] and "--allow-new-classes" in r.json()["message"]
    assert d.client.get("/v1/samples").json()["count"] == 0  # nothing of the batch was stored


def test_new_classes_are_learned_served_rolled_back_and_kept_across_a_restart(serve, open_bundle, open_data, tmp_path):
    x, y, x_test, y_test = open_data
    new = first_seen(y)
    assert set(new) == {"ROW", "TRAP"}
    d = serve(str(open_bundle), "--allow-new-classes", "--allow-unauthenticated-control")
    c = d.client
    posted = c.post("/v1/samples", json={"x": x.tolist(), "y": y.tolist()})
    assert posted.status_code == 201
    first_new = posted.json()["ids"][int(np.flatnonzero(y == new[0])[0])]
    assert c.get(f"/v1/samples/{first_new}").json() | {"x": None, "created": 0} == {
        "id": first_new, "signature": c.get("/v1/model").json()["signature"], "x": None, "y": len(OLD), "label": new[0], "created": 0
    }
    summary = c.get("/v1/samples").json()
    assert summary["labels"] == [*OLD, *new] and set(summary["by_label"]) == {str(k) for k in range(len(OLD) + 2)}
    assert c.get("/v1/model").json()["labels"] == list(OLD)  # no version has learned them yet
    assert len(c.post("/v1/predict", json={"x": x_test[:3].tolist()}).json()["probabilities"][0]) == len(OLD)

    job = wait_job(c, c.post("/v1/jobs", json={}).json()["id"])
    assert job["state"] == "succeeded", job
    model = c.get("/v1/model").json()
    assert model["labels"] == [*OLD, *new] and model["new_labels"] == list(new) and model["adapter_version"] == 1
    assert c.get("/v1/adapters/1").json()["new_labels"] == list(new)

    served = c.post("/v1/predict", json={"x": x_test.tolist()}).json()
    assert len(served["probabilities"][0]) == len(OLD) + 2
    predicted = np.array(served["labels"])
    for name in new:  # the grown head recognises the new classes on the shifted test split (trained on 80%: 0.9 with all)
        assert np.mean(predicted[y_test == name] == name) >= 0.8, name
    (tmp_path / "v1.npz").write_bytes(c.get("/v1/adapters/1/download").content)
    library = Model.open(open_bundle, adapters=tmp_path / "v1.npz")
    assert library.labels == (*OLD, *new)
    classes, probabilities = library.classify(x_test)
    assert served["classes"] == classes.tolist() and served["labels"] == [library.labels[k] for k in classes]
    np.testing.assert_allclose(served["probabilities"], probabilities, rtol=1e-4, atol=1e-5)

    example = c.get("/v1/openapi.json").json()
    assert "new_labels" in example["components"]["schemas"]["ModelInfo"]["properties"]
    assert "--allow-new-classes" in example["components"]["schemas"]["SamplesRequest"]["properties"]["y"]["description"]

    assert c.post("/v1/adapters/rollback").json() == {"active": 0}
    assert c.get("/v1/model").json()["labels"] == list(OLD)
    rolled = c.post("/v1/predict", json={"x": x_test[:20].tolist()}).json()
    assert set(rolled["labels"]) <= set(OLD) and len(rolled["probabilities"][0]) == len(OLD)
    assert c.post("/v1/adapters/1/activate").json() == {"active": 1}
    assert d.stop() == 0

    again = serve(str(open_bundle), "--allow-unauthenticated-control")  # without the flag: known classes stay usable
    assert again.client.get("/v1/model").json()["labels"] == [*OLD, *new]
    r = again.client.post("/v1/samples", json={"x": x[:2].tolist(), "y": [new[1], len(OLD)]})
    assert r.status_code == 201
    r = again.client.post("/v1/samples", json={"x": x[:1].tolist(), "y": ["SHRUG"]})
    assert r.status_code == 422 and "--allow-new-classes" in r.json()["message"]
    assert again.client.get("/v1/samples").json()["labels"] == [*OLD, *new]


def test_new_classes_need_a_skip2lora_job_and_can_be_left_out(serve, open_bundle, open_data):
    x, y, _, _ = open_data
    d = serve(str(open_bundle), "--allow-new-classes", "--allow-unauthenticated-control")
    d.client.post("/v1/samples", json={"x": x[:400].tolist(), "y": y[:400].tolist()})
    r = d.client.post("/v1/jobs", json={"method": "oselm"})
    assert r.status_code == 422 and r.json()["field"] == "method"
    assert "only skip2lora" in r.json()["message"] and "oselm" in r.json()["message"]

    # a fleet round's job: the bundle's classes only (the global adapters hold those), the others left out
    job = wait_job(d.client, d.client.post("/v1/jobs", json={"new_classes": False, "check_accuracy": False}).json()["id"])
    assert job["state"] == "succeeded", job
    assert job["n_train"] + job["n_val"] == int(np.isin(y[:400], OLD).sum())
    assert d.client.get("/v1/adapters/1").json()["new_labels"] == [] and d.client.get("/v1/model").json()["labels"] == list(OLD)


def test_online_learning_leaves_new_classes_to_jobs(serve, open_bundle, open_data, tmp_path):
    """--online cannot be combined with --allow-new-classes; an online daemon on a state dir whose
    samples hold new classes learns only the bundle's classes from them."""
    import os
    import subprocess
    import sys

    from helpers.daemon import ROOT

    x, y, _, _ = open_data
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}
    command = [sys.executable, "-m", "s2rt", "serve", str(open_bundle), "--state-dir", str(tmp_path / "s"), "--port", "0"]
    out = subprocess.run([*command, "--online", "--allow-new-classes"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "--allow-new-classes" in out.stderr and "Traceback" not in out.stderr

    state = tmp_path / "state"
    d = serve(str(open_bundle), "--allow-new-classes", state=state)
    assert d.client.post("/v1/samples", json={"x": x[:400].tolist(), "y": y[:400].tolist()}).status_code == 201
    assert d.stop() == 0
    online = serve(str(open_bundle), "--online", "--online-warmup", "100", state=state)
    status = online.client.get("/v1/online").json()
    old = np.isin(y[:400], OLD)
    assert 0 < status["learned_samples"] <= old.sum() < 400  # the new-class samples were not learned
    assert online.client.get("/v1/model").json()["labels"] == list(OLD)


def test_client_ingests_label_names_and_trains_the_new_classes(serve, open_bundle, open_data, tmp_path, capsys):
    """`s2rt client ingest` sends a file's label names as names, so the daemon resolves (and adds) them."""
    import json

    from s2rt.cli import main

    x, y, _, _ = open_data
    sock = tmp_path / "s.sock"
    serve(str(open_bundle), "--uds", str(sock), "--allow-new-classes")
    np.savez(tmp_path / "ft.npz", x=x[:500], y=y[:500])

    def client(*args: str) -> dict:
        capsys.readouterr()
        assert main(["client", "--uds", str(sock), *args]) == 0, capsys.readouterr().err
        return dict(json.loads(capsys.readouterr().out))

    assert len(first_seen(y[:500])) == 2
    assert client("ingest", "--data", str(tmp_path / "ft.npz"), "--batch", "128")["count"] == 500
    assert client("samples")["labels"] == [*OLD, *first_seen(y[:500])]
    kept = client("train", "--no-new-classes", "--no-check", "--epochs", "2", "--wait")
    assert kept["state"] == "succeeded" and kept["options"]["new_classes"] is False
    grown = client("train", "--no-check", "--epochs", "2", "--wait")
    assert grown["state"] == "succeeded" and client("model")["new_labels"] == list(first_seen(y[:500]))


def test_ridge_statistics_for_a_fleet_leave_the_device_learned_classes_out(serve, open_bundle, open_data, tmp_path):
    """The fleet's sums hold the bundle's classes only: samples of added classes stay on the device."""
    test_key(5).save(tmp_path / "fleet")
    x, y, _, _ = open_data
    d = serve(str(open_bundle), "--allow-new-classes", "--fleet-key", str(tmp_path / "fleet.pub"), "--allow-unauthenticated-control")
    assert d.client.post("/v1/samples", json={"x": x.tolist(), "y": y.tolist()}).status_code == 201
    reply = d.client.post("/v1/fleet/statistics", json={})
    assert reply.status_code == 200, reply.text
    with np.load(io.BytesIO(reply.content), allow_pickle=False) as sums:
        examples, held = int(sums["examples"]), int(sums["held_out.examples"])
    known = np.isin(y, OLD)
    assert 0 < known.sum() < len(y)
    val = held_out(x[known], VAL_FRACTION)
    assert (examples, held) == (int((~val).sum()), int(val.sum()))
