"""`s2rt serve --online`: every labelled sample is learned before its answer, the served head is the
batch ridge solution of the samples learned, snapshots pass the gate, kill -9 loses nothing learned."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
from helpers.daemon import ROOT
from s2rt.bundle import Loss, write_bundle
from s2rt.heads.rls import ridge_solve
from s2rt.serve.gate import held_out
from s2rt.session import Model
from s2rt.state import load_state

CONTROL = "--allow-unauthenticated-control"


def online(serve, bundle, *flags: str, state: Path | None = None):
    return serve(str(bundle), CONTROL, "--online", *flags, state=state)


def post(client, x, y) -> list[int]:
    r = client.post("/v1/samples", json={"x": x.tolist(), "y": y.tolist()})
    assert r.status_code == 201, r.text
    return r.json()["ids"]


def stream(client, x, y, sizes=(1, 5, 2, 9)) -> None:
    """The samples in requests of varying size (the learner must not care)."""
    start, k = 0, 0
    while start < len(x):
        n = sizes[k % len(sizes)]
        post(client, x[start : start + n], y[start : start + n])
        start, k = start + n, k + 1


def download(client, version: int, path: Path) -> Path:
    path.write_bytes(client.get(f"/v1/adapters/{version}/download").content)
    return path


def test_each_sample_is_learned_before_its_answer_and_the_head_is_the_batch_ridge_fit(serve, har_bundle, har_data, tmp_path):
    x, y = har_data
    d = online(serve, har_bundle, "--online-warmup", "32", "--online-holdout", "0", "--snapshot-every", "0")
    c = d.client
    stream(c, x[:31], y[:31])
    status = c.get("/v1/online").json()
    assert status["warming_up"] is True and status["learned_samples"] == 31
    refused = c.post("/v1/online/snapshot")
    assert refused.status_code == 409 and "warming up" in refused.json()["message"]
    assert "learned_samples" not in c.post("/v1/predict", json={"x": x[:1].tolist()}).json(), "the active version serves until the fit"
    stream(c, x[31:150], y[31:150])
    assert c.get("/v1/online").json()["warming_up"] is False

    # the next prediction already reflects the sample just acknowledged: one the head is unsure of, with its runner-up label
    unsure = np.array(c.post("/v1/predict", json={"x": x[150:].tolist()}).json()["probabilities"])
    i = 150 + int(np.flatnonzero(unsure.max(axis=1) < 0.9)[0])
    probe, label = x[i : i + 1], np.argsort(unsure[i - 150])[-2:-1]
    before = c.post("/v1/predict", json={"x": probe.tolist()}).json()
    post(c, probe, label)
    after = c.post("/v1/predict", json={"x": probe.tolist()}).json()
    assert (before["learned_samples"], after["learned_samples"]) == (150, 151)
    assert after["probabilities"][0][label[0]] > before["probabilities"][0][label[0]]
    assert after["adapter_version"] == 0, "no snapshot was taken: version 0 stays the committed one"

    snap = c.post("/v1/online/snapshot").json()
    assert snap["accepted"] is True and snap["version"] == 1 and snap["learned_samples"] == 151
    path = download(c, 1, tmp_path / "v1.npz")
    served = c.post("/v1/predict", json={"x": x[:64].tolist()}).json()
    classes, probabilities = Model.open(har_bundle, adapters=path).classify(x[:64])
    assert served["adapter_version"] == 1 and served["classes"] == classes.tolist()
    np.testing.assert_allclose(served["probabilities"], probabilities, rtol=1e-4, atol=1e-5)

    # the served beta is the batch ridge solution over the 151 samples, with the warm-up's standardization, kappa and lambda
    arrays, meta = load_state(path, Model.open(har_bundle).bundle)
    assert meta["method"] == "oselm" and meta["origin"] == "online"
    kappa, lam = (float(v) for v in arrays["ridge"])
    model = Model.open(har_bundle)
    X, F = model.frozen.run(np.vstack([x[:150], probe]))
    u = (X.astype(np.float64) - arrays["mean"]) / arrays["std"]
    phi = np.hstack([u, np.ones((len(u), 1))])
    target = np.full(F.shape, -1.0 / F.shape[1])
    target[np.arange(151), np.append(y[:150], label)] += 1.0
    target = kappa * target - F
    batch = ridge_solve(phi.T @ phi, phi.T @ target, lam)
    scale = np.abs(batch).max()
    np.testing.assert_allclose(arrays["beta"], batch, rtol=0, atol=2e-4 * scale)
    warmup_only = ridge_solve(phi[:32].T @ phi[:32], phi[:32].T @ target[:32], lam)
    assert np.abs(arrays["beta"] - batch).max() < 0.01 * np.abs(batch - warmup_only).max()


def batch_ridge(bundle, x, y, arrays) -> np.ndarray:
    """The ridge solution over the rows (x, y) with the standardization, kappa and lambda of an oselm state file."""
    kappa, lam = (float(v) for v in arrays["ridge"])
    X, F = Model.open(bundle).frozen.run(x)
    u = (X.astype(np.float64) - arrays["mean"]) / arrays["std"]
    phi = np.hstack([u, np.ones((len(u), 1))])
    target = np.full(F.shape, -1.0 / F.shape[1])
    target[np.arange(len(y)), y] += 1.0
    return ridge_solve(phi.T @ phi, phi.T @ (kappa * target - F), lam)


def test_kappa_and_lambda_are_picked_again_on_the_held_out_samples_and_beta_stays_exact(serve, har_bundle, har_data, tmp_path):
    x, y = har_data
    x, y = x[:200], y[:200]
    d = online(serve, har_bundle, "--online-warmup", "16", "--snapshot-every", "0")
    c = d.client
    stream(c, x, y)
    learned = ~held_out(x, 0.2)
    status = c.get("/v1/online").json()
    assert status["learned_samples"] == learned.sum() and status["held_out_seen"] == (~learned).sum()
    picks = [e for e in d.events() if "picked again" in e.get("msg", "")]
    assert [p["msg"].split(" at ")[1].split()[0] for p in picks] == ["32", "64", "128"]
    snap = c.post("/v1/online/snapshot").json()
    assert snap["accepted"] is True, snap
    arrays, _ = load_state(download(c, snap["version"], tmp_path / "v.npz"), Model.open(har_bundle).bundle)
    assert float(arrays["ridge"][0]) == status["kappa"]
    batch = batch_ridge(har_bundle, x[learned], y[learned], arrays)
    np.testing.assert_allclose(arrays["beta"], batch, rtol=0, atol=2e-4 * np.abs(batch).max())


def test_a_snapshot_worse_than_the_active_version_is_refused_and_learning_goes_on(serve, har_bundle, har_data):
    x, y = har_data
    x, y = x[:300], y[:300].copy()
    judges = held_out(x, 0.2)
    assert judges.any() and (~judges).any()
    y[~judges] = (y[~judges] + 1) % 7  # the learned samples are labelled wrongly, the judges rightly
    d = online(serve, har_bundle, "--online-warmup", "20", "--snapshot-every", "0")
    c = d.client
    stream(c, x, y)
    verdict = c.post("/v1/online/snapshot").json()
    assert verdict["accepted"] is False and verdict.get("version") is None
    assert "below the active version 0" in verdict["reason"] and verdict["val_accuracy"] < verdict["active_val_accuracy"]
    listed = c.get("/v1/adapters").json()
    assert listed["active"] == 0 and [v["version"] for v in listed["versions"]] == [0]
    learned = c.get("/v1/online").json()["learned_samples"]
    assert learned == int((~judges).sum()) and c.get("/v1/online").json()["since_snapshot"] == 0
    k = int(np.flatnonzero(~judges)[0])
    post(c, x[k : k + 1], y[k : k + 1])
    assert c.get("/v1/online").json()["learned_samples"] == learned + 1


def test_kill_9_then_restart_serves_the_same_head_from_a_snapshot_or_from_the_samples(serve, har_bundle, har_data, tmp_path):
    x, y = har_data
    state = tmp_path / "state"
    flags = ("--online-warmup", "32", "--snapshot-every", "100")
    d = online(serve, har_bundle, *flags, state=state)
    stream(d.client, x[:260], y[:260], sizes=(7, 3))
    deadline = time.monotonic() + 60
    while len(d.client.get("/v1/adapters").json()["versions"]) < 3:  # the scheduled snapshots after 100 and 200 learned samples
        assert time.monotonic() < deadline, d.client.get("/v1/adapters").json()
        time.sleep(0.05)
    stream(d.client, x[260:330], y[260:330], sizes=(4,))  # learned after the last snapshot
    expected = d.client.post("/v1/predict", json={"x": x[400:464].tolist()}).json()
    learned = d.client.get("/v1/online").json()["learned_samples"]
    d.kill()

    again = online(serve, har_bundle, *flags, state=state)
    ready = next(e for e in again.events() if e.get("event") == "online_ready")
    assert ready["learned"] == learned and 0 < ready["replayed"] < learned, "resumed from the last snapshot, not from scratch"
    assert again.client.post("/v1/predict", json={"x": x[400:464].tolist()}).json() == expected
    again.kill()

    shutil.rmtree(state / "online")  # without the saved RLS states: every stored sample is learned again
    rebuilt = online(serve, har_bundle, *flags, state=state)
    ready = next(e for e in rebuilt.events() if e.get("event") == "online_ready")
    assert ready["replayed"] == learned
    got = rebuilt.client.post("/v1/predict", json={"x": x[400:464].tolist()}).json()
    assert got["classes"] == expected["classes"] and got["learned_samples"] == learned
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], rtol=0, atol=1e-6)


def test_kill_9_while_samples_stream_in_and_snapshots_are_taken(serve, har_bundle, har_data, tmp_path):
    """Whatever the moment of the kill (mid-request, mid-snapshot), the restarted learner equals one
    rebuilt from the stored samples alone, and has learned every acknowledged sample."""
    x, y = har_data
    state = tmp_path / "state"
    flags = ("--online-warmup", "16", "--snapshot-every", "20")
    d = online(serve, har_bundle, *flags, state=state)
    acknowledged: list[int] = []
    lock, enough = threading.Lock(), threading.Event()

    def ingest(worker: int) -> None:
        with httpx.Client(base_url=d.url, timeout=10) as c:
            for i in range(worker * 300, worker * 300 + 300, 3):
                try:
                    r = c.post("/v1/samples", json={"x": x[i : i + 3].tolist(), "y": y[i : i + 3].tolist()})
                except httpx.HTTPError:
                    return
                with lock:
                    acknowledged.extend(r.json()["ids"])
                    if len(acknowledged) >= 240:
                        enough.set()

    threads = [threading.Thread(target=ingest, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    assert enough.wait(60)
    d.kill()
    for t in threads:
        t.join(30)

    again = online(serve, har_bundle, *flags, state=state)
    status = again.client.get("/v1/online").json()
    assert status["through_sample"] >= max(acknowledged)
    resumed = again.client.post("/v1/predict", json={"x": x[900:964].tolist()}).json()
    assert again.stop() == 0
    shutil.rmtree(state / "online")
    rebuilt = online(serve, har_bundle, *flags, state=state)
    assert rebuilt.client.get("/v1/online").json()["learned_samples"] == status["learned_samples"]
    got = rebuilt.client.post("/v1/predict", json={"x": x[900:964].tolist()}).json()
    assert got["classes"] == resumed["classes"]
    np.testing.assert_allclose(got["probabilities"], resumed["probabilities"], rtol=0, atol=1e-6)


def test_online_mode_refuses_what_would_replace_the_learning_head(serve, har_bundle, har_data):
    x, y = har_data
    d = online(serve, har_bundle, "--online-warmup", "16")
    c = d.client
    stream(c, x[:40], y[:40])
    for path, body in (("/v1/jobs", {}), ("/v1/adapters/0/activate", None), ("/v1/adapters/rollback", None)):
        r = c.post(path, json=body)
        assert r.status_code == 409 and "--online" in r.json()["message"], (path, r.text)
    schema = c.get("/v1/openapi.json").json()
    assert "/v1/online/snapshot" in schema["paths"] and "/v1/online" in schema["paths"]


def test_the_snapshot_endpoint_is_a_control_endpoint(serve, har_bundle):
    d = serve(str(har_bundle), "--online")
    r = d.client.post("/v1/online/snapshot")
    assert r.status_code == 403 and "--token-file" in r.json()["message"]


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}
    return subprocess.run([sys.executable, "-m", "s2rt", "serve", *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_online_on_a_regression_bundle_and_online_settings_alone_are_refused(serve, har_bundle, tiny_file, tmp_path):
    from s2rt.bundle import read_bundle

    tiny = read_bundle(tiny_file)
    regression = tmp_path / "regression.s2l"
    write_bundle(replace(tiny, head=replace(tiny.head, loss=Loss.MSE)), regression)
    out = run_serve(str(regression), "--state-dir", str(tmp_path / "s"), "--online", "--port", "0")
    assert out.returncode == 1 and "--online oselm" in out.stderr and "regression (MSE)" in out.stderr
    assert "Traceback" not in out.stderr
    out = run_serve(str(har_bundle), "--state-dir", str(tmp_path / "s2"), "--snapshot-every", "5", "--port", "0")
    assert out.returncode == 1 and "--snapshot-every: only with --online" in out.stderr
    d = serve(str(har_bundle))
    r = d.client.get("/v1/online")
    assert r.status_code == 409 and "--online" in r.json()["message"]


def test_oselm_rf_learns_online_and_its_snapshot_serves_like_the_library(serve, har_bundle, har_data, tmp_path):
    x, y = har_data
    d = serve(str(har_bundle), CONTROL, "--online", "oselm-rf", "--online-warmup", "16", "--online-holdout", "0", "--snapshot-every", "0")
    c = d.client
    stream(c, x[:60], y[:60])
    assert c.get("/v1/online").json()["method"] == "oselm-rf"
    snap = c.post("/v1/online/snapshot").json()
    assert snap["accepted"] is True and c.get(f"/v1/adapters/{snap['version']}").json()["method"] == "oselm-rf"
    classes, probabilities = Model.open(har_bundle, adapters=download(c, snap["version"], tmp_path / "rf.npz")).classify(x[100:132])
    served = c.post("/v1/predict", json={"x": x[100:132].tolist()}).json()
    assert served["classes"] == classes.tolist() and served["learned_samples"] == 60
    np.testing.assert_allclose(served["probabilities"], probabilities, rtol=1e-4, atol=1e-5)


def test_snapshots_on_a_timer(serve, har_bundle, har_data):
    x, y = har_data
    d = online(serve, har_bundle, "--online-warmup", "16", "--online-holdout", "0", "--snapshot-every", "0", "--snapshot-seconds", "0.2")
    c = d.client
    stream(c, x[:40], y[:40])
    deadline = time.monotonic() + 30
    while (c.get("/v1/adapters/{}".format(c.get("/v1/adapters").json()["active"])).json()["online"] or {}).get("learned") != 40:
        assert time.monotonic() < deadline  # the timer takes snapshots until one holds every sample
        time.sleep(0.05)
    version = c.get("/v1/adapters").json()["active"]
    assert c.get(f"/v1/adapters/{version}").json()["online"]["trigger"] == "schedule"
    time.sleep(0.6)  # nothing learned since: no further snapshot
    assert c.get("/v1/adapters").json()["active"] == version


def test_a_deployed_bundle_gets_its_own_learner_and_a_regression_bundle_is_refused(serve, har_bundle, har_data, tiny_file, tmp_path):
    from s2conv import ConvertOptions, convert
    from s2rt.bundle import read_bundle

    x, y = har_data
    d = online(serve, har_bundle, "--online-warmup", "16", "--allow-unsigned-deploy")
    c = d.client
    stream(c, x[:80], y[:80])
    before = c.post("/v1/predict", json={"x": x[200:232].tolist()}).json()

    tiny = read_bundle(tiny_file)
    regression = tmp_path / "regression.s2l"
    write_bundle(replace(tiny, head=replace(tiny.head, loss=Loss.MSE)), regression)
    r = c.put("/v1/bundle", content=regression.read_bytes())
    assert r.status_code == 409 and "regression (MSE)" in r.json()["message"] and "--online" in r.json()["message"]

    labels = tuple((ROOT / "models" / "data" / "har_labels.txt").read_text().split())
    other = tmp_path / "har_seed3.s2l"  # another digest, the same signature; oselm does not use the head's seeded A
    write_bundle(convert(ROOT / "models" / "har_mlp.onnx", ConvertOptions(labels=labels, rank=2, seed=3)), other)
    assert c.put("/v1/bundle", content=other.read_bytes()).json()["changed"] is True
    after = c.post("/v1/predict", json={"x": x[200:232].tolist()}).json()
    assert after["learned_samples"] == before["learned_samples"] and after["classes"] == before["classes"]
    np.testing.assert_allclose(after["probabilities"], before["probabilities"], rtol=1e-5, atol=1e-6)
    post(c, x[80:81], y[80:81])
    assert c.get("/v1/online").json()["through_sample"] == 81
