"""Many clients ingesting and predicting while a fine-tune job runs; exact counts afterwards."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from helpers.daemon import all_sample_ids, wait_job

CLIENTS, ROUNDS, BATCH, PREDICT_BATCH = 8, 15, 5, 4


def metric(client: httpx.Client, sample: str) -> float:
    return next(float(line.rsplit(" ", 1)[1]) for line in client.get("/v1/metrics").text.splitlines() if line.startswith(sample + " "))


def test_clients_ingest_and_predict_while_a_job_runs(serve, har_bundle, har_data):
    x, y = har_data
    d = serve(str(har_bundle), "--allow-unauthenticated-control")
    c = d.client
    first = c.post("/v1/samples", json={"x": x[:600].tolist(), "y": y[:600].tolist()}).json()["ids"]
    job = c.post("/v1/jobs", json={"epochs": 10_000}).json()
    assert job["n_train"] + job["n_val"] == 600

    def client(k: int) -> tuple[list[int], list[int]]:
        ids, versions = [], []
        with httpx.Client(base_url=d.url, timeout=30) as h:
            for r in range(ROUNDS):
                rows = (np.arange(BATCH) + 600 + (k * ROUNDS + r) * BATCH) % len(x)
                got = h.post("/v1/samples", json={"x": x[rows].tolist(), "y": y[rows].tolist()})
                assert got.status_code == 201, got.text
                ids += got.json()["ids"]
                pred = h.post("/v1/predict", json={"x": x[rows[:PREDICT_BATCH]].tolist()})
                assert pred.status_code == 200, pred.text
                assert len(pred.json()["classes"]) == PREDICT_BATCH
                versions.append(pred.json()["adapter_version"])
        return ids, versions

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client, range(CLIENTS)))
    assert c.get(f"/v1/jobs/{job['id']}").json()["state"] == "running", "the job ran the whole time"
    c.post(f"/v1/jobs/{job['id']}/cancel")
    assert wait_job(c, job["id"])["state"] == "cancelled"

    new_ids = [i for ids, _ in results for i in ids]
    assert len(new_ids) == len(set(new_ids)) == CLIENTS * ROUNDS * BATCH
    assert sorted(all_sample_ids(c)) == sorted(first + new_ids)
    assert c.get("/v1/samples").json()["count"] == 600 + CLIENTS * ROUNDS * BATCH
    assert {v for _, versions in results for v in versions} == {0}
    assert metric(c, "s2rt_predictions_total") == CLIENTS * ROUNDS * PREDICT_BATCH
    assert metric(c, "s2rt_samples_ingested_total") == 600 + CLIENTS * ROUNDS * BATCH
    assert metric(c, 's2rt_http_requests_total{method="POST",route="/v1/predict",status="200"}') == CLIENTS * ROUNDS
    assert metric(c, 's2rt_http_requests_total{method="POST",route="/v1/samples",status="201"}') == 1 + CLIENTS * ROUNDS


def test_the_new_version_swaps_in_atomically_under_load(serve, har_bundle, har_data):
    x, y = har_data
    d = serve(str(har_bundle), "--allow-unauthenticated-control")
    c = d.client
    c.post("/v1/samples", json={"x": x.tolist(), "y": y.tolist()})
    done = threading.Event()

    def watch(_: int) -> list[int]:
        seen = []
        with httpx.Client(base_url=d.url, timeout=30) as h:
            while not done.is_set() or len(seen) < 5:
                r = h.post("/v1/predict", json={"x": x[:2].tolist()})
                assert r.status_code == 200, r.text
                seen.append(r.json()["adapter_version"])
        return seen

    with ThreadPoolExecutor(4) as pool:
        watchers = [pool.submit(watch, k) for k in range(4)]
        job = wait_job(c, c.post("/v1/jobs", json={"epochs": 60, "check_accuracy": False}).json()["id"])
        after = c.post("/v1/predict", json={"x": x[:2].tolist()}).json()["adapter_version"]
        done.set()
        seen = [w.result() for w in watchers]
    assert job["state"] == "succeeded" and after == 1
    for versions in seen:
        assert set(versions) <= {0, 1}
        assert versions == sorted(versions), "once a client has seen the new version it never sees the old one"
