"""The API end to end against a real daemon serving the converted HAR model."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers.daemon import Daemon, all_sample_ids, wait_job
from s2rt.bundle import read_bundle
from s2rt.serve.gate import held_out
from s2rt.session import Model


@pytest.fixture(scope="module")
def daemon(har_bundle, tmp_path_factory):
    """One daemon for the read-only and bad-input tests of this module."""
    root = tmp_path_factory.mktemp("api")
    lab = ["--allow-unauthenticated-control", "--allow-unsigned-deploy"]  # control and unsigned uploads over loopback TCP
    d = Daemon([str(har_bundle), *lab, "--state-dir", str(root / "state"), "--port", "0"], root / "daemon.log")
    yield d
    assert d.stop() == 0


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_health_and_model(daemon, har_bundle):
    c = daemon.client
    assert c.get("/v1/health/live").json() == {"status": "ok"}
    ready = c.get("/v1/health/ready").json()
    assert ready["ready"] is True and ready["adapter_version"] == 0 and ready["training"] is False
    info = c.get("/v1/model").json()
    bundle = read_bundle(har_bundle)
    assert info["bundle_digest"] == bundle.digest == ready["bundle_digest"]
    assert info["input"] == {"name": bundle.input.name, "shape": [48], "dtype": "float32"}
    assert info["labels"] == list(bundle.labels) and len(info["taps"]) == len(bundle.taps) == 3
    assert info["head"]["trainable_parameters"] == bundle.head.num_parameters
    assert c.get("/v1/bundle").content == har_bundle.read_bytes()


def test_predict_json_and_npy_match_the_library(daemon, har_bundle, har_data):
    x = har_data[0][:16]
    expected_classes, expected_probs = Model.open(har_bundle).classify(x)
    c = daemon.client
    batch = c.post("/v1/predict", json={"x": x.tolist()}).json()
    raw = c.post("/v1/predict/npy", content=npy(x), headers={"content-type": "application/octet-stream"}).json()
    single = c.post("/v1/predict", json={"x": x[3].tolist()}).json()
    assert batch["adapter_version"] == raw["adapter_version"] == 0
    assert batch["classes"] == raw["classes"] == expected_classes.tolist()
    np.testing.assert_allclose(batch["probabilities"], expected_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(raw["probabilities"], expected_probs, rtol=1e-5, atol=1e-6)
    assert single["classes"] == [expected_classes[3]] and len(single["probabilities"]) == 1
    assert batch["labels"] == [read_bundle(har_bundle).labels[k] for k in expected_classes]
    as_float64 = c.post("/v1/predict/npy", content=npy(x.astype(np.float64)[:2])).json()
    assert as_float64["classes"] == expected_classes[:2].tolist()


SAMPLE = [0.5] * 48
OBJECT_NPY = b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1, 48), }" + b" " * 50 + b"\n"


def raw_npy(header: bytes, data: bytes) -> bytes:
    padded = header + b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(padded).to_bytes(2, "little") + padded + data


# A negative shape whose product still matches the data: it used to reach reshape and answer 500.
NEGATIVE_NPY = raw_npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (-1, -48), }", b"\0" * 192)

BAD = [
    # (method, path, request kwargs, status, field)
    ("post", "/v1/predict", {"json": {"x": [1.0, 2.0]}}, 422, "x"),
    ("post", "/v1/predict", {"json": {"x": ["a"] * 48}}, 422, "x"),
    ("post", "/v1/predict", {"json": {"x": [True] * 48}}, 422, "x"),
    ("post", "/v1/predict", {"json": {"x": [None] * 48}}, 422, "x"),
    ("post", "/v1/predict", {"content": b'{"x": [NaN' + b", 1" * 47 + b"]}"}, 422, "x"),
    ("post", "/v1/predict", {"content": b'{"x": [Infinity' + b", 1" * 47 + b"]}"}, 422, "x"),
    ("post", "/v1/predict", {"json": {"x": [1e300] * 48}}, 422, "x"),
    ("post", "/v1/predict", {"json": {"x": []}}, 422, "x"),
    ("post", "/v1/predict", {"json": {"x": [SAMPLE, SAMPLE[:-1]]}}, 422, "x"),
    ("post", "/v1/predict", {"json": {"x": [[SAMPLE]]}}, 422, "x"),
    ("post", "/v1/predict", {"json": {}}, 422, "x"),
    ("post", "/v1/predict", {"json": {"x": SAMPLE, "extra": 1}}, 422, "extra"),
    ("post", "/v1/predict", {"json": [SAMPLE]}, 422, "body"),
    ("post", "/v1/predict", {"content": b'{"x": [1, 2'}, 422, "body"),
    ("post", "/v1/predict", {"content": b"[" * 100_000}, 400, "body"),
    ("post", "/v1/predict", {"content": b"0" * (9 << 20)}, 413, None),
    ("post", "/v1/predict/npy", {"content": b"not a numpy file"}, 422, "body"),
    ("post", "/v1/predict/npy", {"content": OBJECT_NPY}, 422, "body"),
    ("post", "/v1/predict/npy", {"content": NEGATIVE_NPY}, 422, "body"),
    ("post", "/v1/predict", {"json": {"x": [2**200] * 48}}, 422, "x"),
    ("post", "/v1/predict", {"json": {"x": [2**2000] * 48}}, 422, "x"),
    ("post", "/v1/predict", {"json": {"x": [[]]}}, 422, "x"),
    ("post", "/v1/predict/npy", {"content": npy(np.zeros((2, 48), np.complex64))}, 422, "body"),
    ("post", "/v1/predict/npy", {"content": npy(np.zeros((2, 48), bool))}, 422, "body"),
    ("post", "/v1/predict/npy", {"content": npy(np.zeros((2, 47), np.float32))}, 422, "body"),
    ("post", "/v1/predict/npy", {"content": npy(np.zeros((2, 48), np.float32))[:-8]}, 422, "body"),
    ("post", "/v1/predict/npy", {"content": npy(np.full((1, 48), np.nan, np.float32))}, 422, "body"),
    ("post", "/v1/samples", {"json": {"x": SAMPLE, "y": "NO_SUCH_CLASS"}}, 422, "y"),
    ("post", "/v1/samples", {"json": {"x": [SAMPLE, SAMPLE], "y": [1, 7]}}, 422, "y[1]"),
    ("post", "/v1/samples", {"json": {"x": [SAMPLE, SAMPLE], "y": [1]}}, 422, "y"),
    ("post", "/v1/samples", {"json": {"x": SAMPLE, "y": [1]}}, 422, "y"),
    ("post", "/v1/samples", {"json": {"x": SAMPLE, "y": True}}, 422, "y"),
    ("post", "/v1/samples", {"json": {"x": SAMPLE, "y": 1.5}}, 422, "y"),
    ("post", "/v1/samples", {"json": {"x": SAMPLE, "y": -1}}, 422, "y"),
    ("post", "/v1/samples", {"json": {"x": SAMPLE}}, 422, "y"),
    ("post", "/v1/samples", {"content": b'{"y": 0, "x": [-Infinity' + b", 1" * 47 + b"]}"}, 422, "x"),
    ("get", "/v1/samples/123456", {}, 404, "sample_id"),
    ("get", "/v1/samples?limit=0", {}, 422, "limit"),
    ("post", "/v1/jobs", {"json": {"epochs": 0}}, 422, "epochs"),
    ("post", "/v1/jobs", {"json": {"epochs": "ten"}}, 422, "epochs"),
    ("post", "/v1/jobs", {"json": {"optimizer": "lbfgs"}}, 422, "optimizer"),
    ("post", "/v1/jobs", {"json": {"learning_rate": -1}}, 422, "learning_rate"),
    ("post", "/v1/jobs", {"json": {"learning_rate": 5e-324, "optimizer": "adam"}}, 422, "learning_rate"),
    ("post", "/v1/jobs", {"json": {"val_fraction": 1.0}}, 422, "val_fraction"),
    ("post", "/v1/jobs", {"json": {"val_fraction": 0.0}}, 422, "val_fraction"),
    ("post", "/v1/jobs", {"json": {"unknown_option": 1}}, 422, "unknown_option"),
    ("post", "/v1/jobs", {"json": {}}, 409, "samples"),
    ("get", "/v1/jobs/999", {}, 404, "job_id"),
    ("get", "/v1/jobs/abc", {}, 422, "job_id"),
    ("get", f"/v1/jobs/{2**70}", {}, 422, "job_id"),
    ("post", "/v1/jobs/999/cancel", {}, 404, "job_id"),
    ("get", "/v1/adapters/5", {}, 404, "version"),
    ("get", "/v1/adapters/5/download", {}, 404, "version"),
    ("get", "/v1/adapters/0/download", {}, 404, "version"),
    ("post", "/v1/adapters/5/activate", {}, 404, "version"),
    ("post", "/v1/adapters/rollback", {}, 409, "version"),
    ("put", "/v1/bundle", {"content": b"garbage"}, 422, "body"),
    ("get", "/v1/no/such/route", {}, 404, None),
    ("delete", "/v1/model", {}, 405, None),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "field"), BAD, ids=[f"{m} {p} {i}" for i, (m, p, *_) in enumerate(BAD)])
def test_bad_input_is_a_4xx_naming_the_field(daemon, method, path, kwargs, status, field):
    if "content" in kwargs and "headers" not in kwargs and not path.endswith(("npy", "bundle")):
        kwargs = {**kwargs, "headers": {"content-type": "application/json"}}
    r = daemon.client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "field", "message"} and body["message"]
    assert body["field"] == field, body


def test_messages_point_at_the_value_at_fault(daemon):
    def message(path: str, **kwargs) -> str:
        r = daemon.client.post(path, **kwargs)
        assert r.status_code == 422, r.text
        return r.json()["message"]

    assert message("/v1/predict", json={"x": [*SAMPLE[:-1], None]}) == "x[47]: expected a number, found null"
    huge = message("/v1/predict", json={"x": [SAMPLE, [*SAMPLE[:-1], 2**2000]]})
    assert huge.startswith("x[1][47]: an integer of 603 digits is out of range")
    beyond_float32 = message("/v1/predict", json={"x": [SAMPLE, [2**200, *SAMPLE[1:]]]})
    assert beyond_float32.startswith("x[1][0]: 1.60694e+60 is out of range for float32")
    assert "negative dimension" in message("/v1/predict/npy", content=NEGATIVE_NPY)
    assert "learning_rate" in message("/v1/jobs", json={"learning_rate": 5e-324, "optimizer": "adam"})


def test_an_integer_beyond_int64_is_a_number_like_any_other(daemon):
    as_int = daemon.client.post("/v1/predict", json={"x": [2**70, *SAMPLE[1:]]})
    as_float = daemon.client.post("/v1/predict", json={"x": [float(2**70), *SAMPLE[1:]]})
    assert as_int.status_code == as_float.status_code == 200, as_int.text
    assert as_int.json() == as_float.json()


def test_options_lists_the_methods_of_a_route(daemon):
    for path, allowed in [("/v1/bundle", "GET, OPTIONS, PUT"), ("/v1/predict", "OPTIONS, POST"), ("/v1/jobs/7", "GET, OPTIONS")]:
        r = daemon.client.options(path)
        assert r.status_code == 204 and r.headers["allow"] == allowed and r.content == b"", (path, r.status_code)
    assert daemon.client.options("/v1/no/such/route").status_code == 404
    refused = daemon.client.delete("/v1/model")
    assert refused.status_code == 405 and "GET" in refused.headers["allow"]


def test_a_truncated_bundle_upload_is_refused_and_the_old_one_stays(daemon, har_bundle):
    data = har_bundle.read_bytes()
    r = daemon.client.put("/v1/bundle", content=data[: len(data) // 2])
    assert r.status_code == 422 and r.json()["error"] == "invalid_bundle"
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    r = daemon.client.put("/v1/bundle", content=bytes(flipped))
    assert r.status_code == 422 and "digest" in r.json()["message"].lower()
    assert daemon.client.get("/v1/model").json()["bundle_digest"] == read_bundle(har_bundle).digest
    assert daemon.client.get("/v1/health/ready").status_code == 200


def test_metrics_are_prometheus_text(daemon):
    daemon.client.post("/v1/predict", json={"x": SAMPLE})
    r = daemon.client.get("/v1/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    assert "# TYPE s2rt_http_requests_total counter" in lines
    assert any(line.startswith('s2rt_http_requests_total{method="POST",route="/v1/predict",status="200"}') for line in lines)
    assert any(line.startswith('s2rt_http_request_duration_seconds_bucket{route="/v1/predict",le="+Inf"}') for line in lines)
    predictions = next(float(line.split()[1]) for line in lines if line.startswith("s2rt_predictions_total "))
    assert predictions >= 1
    for name in ("s2rt_samples_stored", "s2rt_cache_hits_total", "s2rt_active_adapter_version", "s2rt_training_active"):
        assert any(line.startswith(name + " ") for line in lines), name


def test_openapi_schema_lists_every_route(daemon):
    schema = daemon.client.get("/v1/openapi.json").json()
    paths = set(schema["paths"])
    assert {"/v1/predict", "/v1/predict/npy", "/v1/samples", "/v1/jobs", "/v1/jobs/{job_id}/cancel", "/v1/adapters/rollback"} <= paths
    assert {"/v1/bundle", "/v1/metrics", "/v1/health/live", "/v1/health/ready", "/v1/model"} <= paths


def test_a_job_whose_adapters_could_not_be_checked_is_refused_up_front(daemon, har_data):
    x, y = har_data
    train_only = np.flatnonzero(~held_out(x, 0.2))[:3]
    assert daemon.client.post("/v1/samples", json={"x": x[train_only].tolist(), "y": y[train_only].tolist()}).status_code == 201
    refused = daemon.client.post("/v1/jobs", json={"epochs": 1})
    assert refused.status_code == 409 and refused.json()["field"] == "samples" and "held-out" in refused.json()["message"]
    unchecked = wait_job(daemon.client, daemon.client.post("/v1/jobs", json={"epochs": 1, "check_accuracy": False}).json()["id"])
    assert unchecked["state"] == "succeeded" and unchecked["n_val"] == 0


def test_ingest_train_activate_rollback_download(serve, har_bundle, har_data, tmp_path):
    x, y = har_data
    d = serve(str(har_bundle), "--allow-unauthenticated-control")
    c = d.client
    created = c.post("/v1/samples", json={"x": x.tolist(), "y": y.tolist()})
    assert created.status_code == 201 and created.json()["count"] == len(x)
    ids = created.json()["ids"]
    one = c.post("/v1/samples", json={"x": x[0].tolist(), "y": "ABD"}).json()
    assert one["count"] == 1 and one["ids"][0] > ids[-1]
    summary = c.get("/v1/samples").json()
    assert summary["count"] == len(x) + 1
    expected = {str(k): int(v) for k, v in zip(*np.unique(np.append(y, 1), return_counts=True))}
    assert summary["by_label"] == expected
    assert all_sample_ids(c) == [*ids, one["ids"][0]]
    stored = c.get(f"/v1/samples/{ids[5]}").json()
    assert stored["y"] == y[5] and np.array_equal(np.array(stored["x"], np.float32), x[5])

    job = c.post("/v1/jobs", json={"epochs": 15, "seed": 1})
    assert job.status_code == 202 and job.json()["state"] == "running"
    busy = c.post("/v1/jobs", json={"epochs": 1})
    assert busy.status_code in (202, 409)  # 202 only if the first job already finished
    done = wait_job(c, job.json()["id"])
    assert done["state"] == "succeeded", done["message"]
    assert done["result"]["version"] == 1 and done["result"]["val_accuracy"] >= done["result"]["active_val_accuracy"]
    assert len(done["history"]) == 15 and all("val_accuracy" in e for e in done["history"])
    assert done["n_train"] + done["n_val"] == len(x) + 1 and done["n_val"] > 0
    if busy.status_code == 202:
        wait_job(c, busy.json()["id"])
    active = c.get("/v1/adapters").json()["active"]

    adapters = tmp_path / "v.npz"
    adapters.write_bytes(c.get(f"/v1/adapters/{active}/download").content)
    reference = Model.open(har_bundle, adapters=adapters).classify(x[:32])[0]
    predicted = c.post("/v1/predict", json={"x": x[:32].tolist()}).json()
    assert predicted["adapter_version"] == active and predicted["classes"] == reference.tolist()

    listed = c.get("/v1/adapters").json()
    assert [v["version"] for v in listed["versions"]][:2] == [0, 1]
    assert listed["versions"][1]["metrics"]["val_accuracy"] == pytest.approx(done["result"]["val_accuracy"])
    assert c.post("/v1/adapters/rollback").json()["active"] == listed["history"][-2]
    assert c.post("/v1/adapters/0/activate").json() == {"active": 0}
    initial = Model.open(har_bundle).classify(x[:32])[0]
    assert c.post("/v1/predict", json={"x": x[:32].tolist()}).json()["classes"] == initial.tolist()
    assert c.post("/v1/adapters/1/activate").json() == {"active": 1}

    # A short run from the initial head cannot beat version 1 on the held-out split: rejected, 1 stays.
    weak = wait_job(c, c.post("/v1/jobs", json={"epochs": 1, "learning_rate": 1e-6, "start_from": "initial"}).json()["id"])
    assert weak["state"] == "rejected" and "stays active" in weak["message"]
    assert c.get("/v1/health/ready").json()["adapter_version"] == 1

    long = c.post("/v1/jobs", json={"epochs": 10_000}).json()
    cancelled = c.post(f"/v1/jobs/{long['id']}/cancel")
    assert cancelled.status_code == 200
    final = wait_job(c, long["id"])
    assert final["state"] == "cancelled" and c.get("/v1/health/ready").json()["adapter_version"] == 1
    assert [j["id"] for j in c.get("/v1/jobs").json()["jobs"]][0] == long["id"]

    metrics = c.get("/v1/metrics").text
    assert 's2rt_training_runs_total{outcome="succeeded"}' in metrics and 's2rt_training_runs_total{outcome="cancelled"} 1' in metrics
    assert d.stop() == 0
    events = d.events()
    assert all(isinstance(e.get("ts"), str) and e.get("level") for e in events), "every log line is a JSON object"
    assert any(e.get("event") == "job_finished" and e.get("state") == "rejected" for e in events)
