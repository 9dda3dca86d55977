"""Deploying bundles: verified before they replace the served one, samples kept across
bundles with the same input signature, the Skip-Cache rebuilt, restarts on a bundle file."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.daemon import wait_job
from s2rt.bundle import read_bundle, write_bundle

MODELS = Path(__file__).resolve().parents[2] / "models"
LAB = ("--allow-unauthenticated-control", "--allow-unsigned-deploy")  # uploads of unsigned bundles over loopback TCP


@pytest.fixture(scope="module")
def har_rank2(tmp_path_factory):
    """The HAR model converted with other head options: another digest, the same input signature."""
    from s2conv import ConvertOptions, convert

    labels = tuple((MODELS / "data" / "har_labels.txt").read_text().split())
    path = tmp_path_factory.mktemp("har2") / "har_rank2.s2l"
    write_bundle(convert(MODELS / "har_mlp.onnx", ConvertOptions(labels=labels, rank=2, seed=3)), path)
    return path


def metric(client, name: str) -> float:
    return next(float(line.split()[1]) for line in client.get("/v1/metrics").text.splitlines() if line.startswith(name + " "))


def test_upload_keeps_samples_of_the_same_signature_and_rebuilds_the_cache(serve, har_bundle, har_rank2, tiny_file, har_data, tmp_path):
    x, y = har_data
    a, b = read_bundle(har_bundle).digest, read_bundle(har_rank2).digest
    d = serve(str(har_bundle), *LAB)
    c = d.client
    c.post("/v1/samples", json={"x": x[:500].tolist(), "y": y[:500].tolist()})
    assert wait_job(c, c.post("/v1/jobs", json={"epochs": 3, "check_accuracy": False}).json()["id"])["state"] == "succeeded"
    assert metric(c, "s2rt_cache_records") == 500

    busy = c.post("/v1/jobs", json={"epochs": 10_000}).json()
    refused = c.put("/v1/bundle", content=har_rank2.read_bytes())
    assert refused.status_code == 409 and "running" in refused.json()["message"]
    c.post(f"/v1/jobs/{busy['id']}/cancel")
    wait_job(c, busy["id"])

    deployed = c.put("/v1/bundle", content=har_rank2.read_bytes()).json()
    assert deployed == {"bundle_digest": b, "changed": True, "samples": 500}
    ready = c.get("/v1/health/ready").json()
    assert ready["bundle_digest"] == b and ready["adapter_version"] == 0
    assert metric(c, "s2rt_cache_records") == 0, "a new bundle starts with an empty cache"
    assert c.get("/v1/bundle").content == har_rank2.read_bytes()
    job = wait_job(c, c.post("/v1/jobs", json={"epochs": 2, "check_accuracy": False}).json()["id"])
    assert job["n_train"] + job["n_val"] == 500 and job["result"]["cache_misses"] == 500

    other = c.put("/v1/bundle", content=tiny_file.read_bytes()).json()
    assert other["changed"] and other["samples"] == 0
    assert c.get("/v1/samples").json()["count_all_signatures"] == 500

    back = c.put("/v1/bundle", content=har_bundle.read_bytes()).json()
    assert back == {"bundle_digest": a, "changed": True, "samples": 500}
    assert c.get("/v1/health/ready").json()["adapter_version"] == 1, "the bundle's own versions come back with it"
    assert c.put("/v1/bundle", content=har_bundle.read_bytes()).json()["changed"] is False
    assert d.stop() == 0

    # Restarting on the file it was first started on keeps what was deployed since; a new file replaces it.
    d = serve(str(har_rank2), *LAB)
    assert d.client.get("/v1/health/ready").json()["bundle_digest"] == b
    d.client.put("/v1/bundle", content=har_bundle.read_bytes())
    assert d.stop() == 0
    again = serve(str(har_rank2), *LAB)
    assert again.client.get("/v1/health/ready").json()["bundle_digest"] == a
    assert again.stop() == 0

    broken = tmp_path / "broken.s2l"
    broken.write_bytes(tiny_file.read_bytes()[:200])
    kept = serve(str(broken), *LAB)
    assert kept.client.get("/v1/health/ready").json()["bundle_digest"] == a
    assert any(e.get("level") == "error" and "broken.s2l" in e["msg"] for e in kept.events())
