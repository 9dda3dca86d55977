"""Adapter versions of any fine-tuning method: the daemon serves whatever method the active version holds."""

from __future__ import annotations

import numpy as np
from helpers.daemon import wait_job
from s2rt.session import Model


def served_equals_library(client, bundle, x, tmp_path, version: int) -> dict:
    path = tmp_path / f"v{version}.npz"
    path.write_bytes(client.get(f"/v1/adapters/{version}/download").content)
    classes, probabilities = Model.open(bundle, adapters=path).classify(x)
    got = client.post("/v1/predict", json={"x": x.tolist()}).json()
    assert got["adapter_version"] == version and got["classes"] == classes.tolist()
    np.testing.assert_allclose(got["probabilities"], probabilities, rtol=1e-4, atol=1e-5)
    return got


def test_versions_of_other_methods_are_trained_served_and_rolled_back(serve, har_bundle, har_data, tmp_path):
    x, y = har_data
    d = serve(str(har_bundle), "--allow-unauthenticated-control")
    c = d.client
    c.post("/v1/samples", json={"x": x[:600].tolist(), "y": y[:600].tolist()})
    before = c.post("/v1/predict", json={"x": x[:64].tolist()}).json()

    oselm = wait_job(c, c.post("/v1/jobs", json={"method": "oselm", "check_accuracy": False}).json()["id"])
    assert oselm["state"] == "succeeded", oselm
    assert c.get("/v1/model").json()["head"]["method"] == "oselm"
    listed = {v["version"]: v for v in c.get("/v1/adapters").json()["versions"]}
    assert listed[0]["method"] == "skip2lora" and listed[1]["method"] == "oselm"
    served_oselm = served_equals_library(c, har_bundle, x[:64], tmp_path, 1)
    assert served_oselm["probabilities"] != before["probabilities"]

    # an affine method goes through the predict graph again; a job without `method` continues the active one's
    ft = wait_job(c, c.post("/v1/jobs", json={"method": "ft-last", "epochs": 3, "check_accuracy": False}).json()["id"])
    assert ft["state"] == "succeeded", ft
    served_equals_library(c, har_bundle, x[:64], tmp_path, 2)
    again = wait_job(c, c.post("/v1/jobs", json={"epochs": 1, "check_accuracy": False}).json()["id"])
    assert again["state"] == "succeeded" and again["options"]["method"] is None
    assert c.get("/v1/adapters/3").json()["method"] == "ft-last"

    assert c.post("/v1/adapters/1/activate").json() == {"active": 1}
    assert c.post("/v1/predict", json={"x": x[:64].tolist()}).json() == served_oselm


def test_an_unknown_method_is_refused_naming_the_field(serve, har_bundle, har_data):
    x, y = har_data
    d = serve(str(har_bundle), "--allow-unauthenticated-control")
    d.client.post("/v1/samples", json={"x": x[:100].tolist(), "y": y[:100].tolist()})
    r = d.client.post("/v1/jobs", json={"method": "sgd-everything"})
    assert r.status_code == 422 and r.json()["field"] == "method"
    assert "sgd-everything" in r.json()["message"] and "oselm" in r.json()["message"]
