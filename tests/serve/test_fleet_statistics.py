"""`POST /v1/fleet/statistics` on a real `s2rt serve`: the device's ridge sums over its stored samples,
split as jobs split them, equal to the sums computed directly from the same samples."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers.keys import test_key
from s2rt.heads.sums import ridge_sums
from s2rt.serve.gate import VAL_FRACTION, held_out
from s2rt.session import Model

N_SAMPLES = 300


@pytest.fixture
def fleet_pub(tmp_path):
    test_key(5).save(tmp_path / "fleet")
    return tmp_path / "fleet.pub"


def parts(body: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(body), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_the_sums_are_those_of_the_stored_samples_split_as_jobs_split_them(serve, har_bundle, har_data, fleet_pub):
    d = serve(str(har_bundle), "--fleet-key", str(fleet_pub), "--allow-unauthenticated-control")
    x, y = har_data[0][:N_SAMPLES], har_data[1][:N_SAMPLES]
    assert d.client.post("/v1/samples", json={"x": x.tolist(), "y": y.tolist()}).status_code == 201
    reply = d.client.post("/v1/fleet/statistics", json={"kappa": 3.0})
    assert reply.status_code == 200, reply.text
    got = parts(reply.content)
    model = Model.open(str(har_bundle))
    val = held_out(x, VAL_FRACTION)
    assert 0 < val.sum() < N_SAMPLES
    width, outputs = sum(t.size for t in model.bundle.taps), model.bundle.head.num_outputs
    for prefix, mask in (("", ~val), ("held_out.", val)):
        taps, frozen = model.frozen.run(x[mask])
        want = ridge_sums([(taps, frozen, y[mask])], width, outputs, 3.0, regression=False)
        np.testing.assert_allclose(got[prefix + "gram"], want.gram, rtol=1e-5, atol=1e-6 * np.abs(want.gram).max())
        np.testing.assert_allclose(got[prefix + "cross"], want.cross, rtol=1e-5, atol=1e-6 * np.abs(want.cross).max())
        assert float(got[prefix + "targets"]) == pytest.approx(want.targets, rel=1e-9)
        assert int(got[prefix + "examples"]) == want.examples == int(mask.sum())
    # a job trains on exactly the samples summed, and the second call reads them from the Skip-Cache
    job = d.client.post("/v1/jobs", json={"epochs": 1}).json()
    assert job["n_train"] == int(got["examples"]) and job["n_val"] == int(got["held_out.examples"])
    d.client.post(f"/v1/jobs/{job['id']}/cancel")


def test_the_sums_are_off_without_a_fleet_key_and_guarded_as_control(serve, tiny_file, fleet_pub):
    off = serve(str(tiny_file), "--allow-unauthenticated-control")
    refused = off.client.post("/v1/fleet/statistics", json={})
    assert refused.status_code == 403 and refused.json()["error"] == "fleet_disabled", refused.text
    assert "computing ridge statistics for a fleet is off: start the daemon with --fleet-key" in refused.json()["message"]
    off.kill()
    guarded = serve(str(tiny_file), "--fleet-key", str(fleet_pub))  # TCP, no token: control endpoints need one
    refused = guarded.client.post("/v1/fleet/statistics", json={})
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden", refused.text
    assert "/v1/fleet/statistics" in guarded.client.get("/v1/openapi.json").json()["paths"]


def test_bad_kappa_and_no_samples_are_refused_by_name(serve, tiny_file, fleet_pub):
    d = serve(str(tiny_file), "--fleet-key", str(fleet_pub), "--allow-unauthenticated-control")
    bad = d.client.post("/v1/fleet/statistics", json={"kappa": 0})
    assert bad.status_code == 422 and bad.json()["field"] == "kappa", bad.text
    empty = d.client.post("/v1/fleet/statistics", json={})
    assert empty.status_code == 409 and "0 labelled samples stored" in empty.json()["message"], empty.text


def test_a_bundle_whose_fused_taps_exceed_the_limit_is_refused_naming_it(serve, tmp_path, fleet_pub):
    from helpers.tiny import tiny_bundle, tiny_weights
    from s2rt.bundle import write_bundle
    from s2rt.heads.sums import MAX_WIDTH

    wide = tmp_path / "wide.s2l"
    write_bundle(tiny_bundle(tiny_weights(d_in=MAX_WIDTH, d_hidden=4)), wide)  # D = MAX_WIDTH + 4
    d = serve(str(wide), "--fleet-key", str(fleet_pub), "--allow-unauthenticated-control")
    refused = d.client.post("/v1/fleet/statistics", json={})
    assert refused.status_code == 409 and refused.json()["error"] == "too_large", refused.text
    assert f"D = {MAX_WIDTH + 4} features; the D x D sums are limited to D <= {MAX_WIDTH}" in refused.json()["message"]
