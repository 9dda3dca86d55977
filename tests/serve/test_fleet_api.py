"""The daemon as a fleet member, on a real `s2rt serve`: a global adapter version signed by the
fleet key is imported (`POST /v1/adapters`), checked before it is stored and activated only
through the accuracy gate; a job starts from a given version, reports its example count and
keeps its result as a downloadable version (`commit: always`)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.daemon import ROOT, wait_job
from helpers.keys import test_key
from s2rt.bundle import Bundle
from s2rt.cli import main
from s2rt.serve.fleet_signing import SEQUENCE_HEADER, SIGNATURE_HEADER, adapter_file, sign
from s2rt.trust import open_trusted

FLEET, STRANGER = test_key(5), test_key(6)
N_SAMPLES = 300


@pytest.fixture
def fleet_pub(tmp_path: Path) -> Path:
    test_key(5).save(tmp_path / "fleet")
    return tmp_path / "fleet.pub"


@pytest.fixture
def member(serve, har_bundle, har_data, fleet_pub):
    """A daemon on HAR with the fleet key and N_SAMPLES stored samples."""
    d = serve(str(har_bundle), "--fleet-key", str(fleet_pub), "--allow-unauthenticated-control")
    x, y = har_data
    stored = d.client.post("/v1/samples", json={"x": x[:N_SAMPLES].tolist(), "y": y[:N_SAMPLES].tolist()})
    assert stored.status_code == 201, stored.text
    return d


def adapters(bundle: Bundle, seed: int, scale: float = 0.05) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    h = bundle.head
    return [(a.copy(), (scale * rng.standard_normal((h.num_outputs, h.rank))).astype(np.float32)) for a in h.a_init]


def arrays_of(npz: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(npz), allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k[:2] in ("A.", "B.")}


def post(d, data: bytes, headers: dict[str, str], activate: bool = False):
    params = {"activate": "true"} if activate else {}
    return d.client.post("/v1/adapters", content=data, headers=headers, params=params)


def test_an_import_must_be_signed_by_the_fleet_key_for_the_served_bundle(member, har_bundle):
    bundle = open_trusted(har_bundle)
    data = adapter_file(adapters(bundle, 1), bundle, round=1)
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 1
    cases = {
        "unsigned": (data, {}, "is not signed"),
        "another key": (data, sign(data, bundle.digest, STRANGER), f"signed by key {STRANGER.key_id}, which is not among the fleet keys"),
        "tampered": (bytes(tampered), sign(data, bundle.digest, FLEET), "does not verify"),
        "another bundle": (data, sign(data, "f" * 64, FLEET), "does not verify"),
    }
    for name, (body, headers, message) in cases.items():
        refused = post(member, body, headers, activate=True)
        assert refused.status_code == 403, (name, refused.text)
        assert refused.json()["error"] == "bad_signature" and message in refused.json()["message"], (name, refused.text)
    assert [v["version"] for v in member.client.get("/v1/adapters").json()["versions"]] == [0]


def test_a_signed_file_that_is_not_an_adapter_file_is_refused_by_name(member, har_bundle):
    digest = open_trusted(har_bundle).digest
    junk = b"not an npz at all"
    refused = post(member, junk, sign(junk, digest, FLEET))
    assert refused.status_code == 422 and refused.json()["error"] == "invalid_adapters", refused.text
    assert "the adapter file" in refused.json()["message"] and "/uploads/" not in refused.json()["message"]


def test_imports_are_off_without_a_fleet_key_and_need_control_access(serve, har_bundle, tmp_path):
    bundle = open_trusted(har_bundle)
    data = adapter_file(adapters(bundle, 1), bundle)
    off = serve(str(har_bundle), "--allow-unauthenticated-control", state=tmp_path / "a")
    refused = post(off, data, sign(data, bundle.digest, FLEET))
    assert refused.status_code == 403 and refused.json()["error"] == "fleet_disabled" and "--fleet-key" in refused.json()["message"]
    test_key(5).save(tmp_path / "fleet")
    guarded = serve(str(har_bundle), "--fleet-key", str(tmp_path / "fleet.pub"), state=tmp_path / "b")
    refused = post(guarded, data, sign(data, bundle.digest, FLEET))
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"


def test_a_verified_version_is_stored_not_activated_and_downloads_unchanged(member, har_bundle):
    bundle = open_trusted(har_bundle)
    sent = adapters(bundle, 2)
    data = adapter_file(sent, bundle, round=3)
    imported = post(member, data, sign(data, bundle.digest, FLEET))
    assert imported.status_code == 201, imported.text
    body = imported.json()
    assert body["version"] == 1 and not body["activated"] and body["active"] == 0 and body["signed_by"] == FLEET.key_id
    info = member.client.get("/v1/adapters/1").json()
    assert info["loadable"] and not info["active"] and info["origin"] == "fleet" and info["fleet_round"] == 3
    got = arrays_of(member.client.get("/v1/adapters/1/download").content)
    for t, (a, b) in enumerate(sent):
        np.testing.assert_array_equal(got[f"A.{t}"], a)
        np.testing.assert_array_equal(got[f"B.{t}"], b)


def test_activation_on_request_goes_through_the_accuracy_gate(member, har_bundle):
    bundle = open_trusted(har_bundle)
    job = member.client.post("/v1/jobs", json={"epochs": 30}).json()
    assert wait_job(member.client, job["id"])["state"] == "succeeded"
    trained = member.client.get("/v1/adapters/1/download").content  # a good version: the device's own training
    got = arrays_of(trained)
    good = adapter_file([(got[f"A.{t}"], got[f"B.{t}"]) for t in range(len(bundle.taps))], bundle)
    accepted = post(member, good, sign(good, bundle.digest, FLEET), activate=True).json()
    assert accepted["activated"] and accepted["active"] == accepted["version"] == 2, accepted
    assert accepted["val_accuracy"] >= accepted["active_val_accuracy"]
    initial = [(a, np.zeros_like(b)) for a, b in adapters(bundle, 0)]  # B = 0: the untrained head, worse than version 2
    worse = adapter_file(initial, bundle)
    kept = post(member, worse, sign(worse, bundle.digest, FLEET), activate=True).json()
    assert not kept["activated"] and kept["version"] == 3 and kept["active"] == 2, kept
    assert kept["val_accuracy"] < kept["active_val_accuracy"] and "stays active" in kept["reason"]
    assert member.client.get("/v1/adapters").json()["active"] == 2


def test_a_job_starts_from_a_given_version_reports_its_examples_and_keeps_its_result(member, har_bundle):
    bundle = open_trusted(har_bundle)
    sent = adapters(bundle, 4)
    data = adapter_file(sent, bundle)
    version = post(member, data, sign(data, bundle.digest, FLEET)).json()["version"]
    # A step too small to change float32 adapters: what the job keeps is the version it started from.
    job = member.client.post(
        "/v1/jobs", json={"start_from": version, "epochs": 1, "learning_rate": 1e-10, "optimizer": "sgd", "commit": "always"}
    )
    assert job.status_code == 202, job.text
    done = wait_job(member.client, job.json()["id"])
    assert done["start_version"] == version
    assert done["examples"] == done["n_train"] > 0 and done["n_train"] + done["n_val"] == N_SAMPLES
    kept = done["result"]["version"]
    assert kept == version + 1, done
    got = arrays_of(member.client.get(f"/v1/adapters/{kept}/download").content)
    for t, (a, b) in enumerate(sent):
        np.testing.assert_allclose(got[f"B.{t}"], b, atol=1e-6)
        np.testing.assert_allclose(got[f"A.{t}"], a, atol=1e-6)


def test_start_from_an_unknown_version_is_refused_by_name(member):
    refused = member.client.post("/v1/jobs", json={"start_from": 99})
    assert refused.status_code == 404 and refused.json()["field"] == "start_from", refused.text
    bad = member.client.post("/v1/jobs", json={"start_from": "latest"})
    assert bad.status_code == 422 and "start_from" in bad.json()["field"], bad.text


def test_the_client_trains_from_a_version_and_keeps_the_result(member, har_bundle, capsys):
    bundle = open_trusted(har_bundle)
    data = adapter_file(adapters(bundle, 8), bundle)
    version = post(member, data, sign(data, bundle.digest, FLEET)).json()["version"]
    capsys.readouterr()
    args = ["client", "--url", member.url, "train", "--from-version", str(version), "--commit-always", "--epochs", "2", "--wait"]
    assert main(args) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["start_version"] == version and job["options"]["commit"] == "always" and job["result"]["version"] == version + 1


def test_a_malformed_signature_header_is_refused_by_name(member, har_bundle):
    bundle = open_trusted(har_bundle)
    data = adapter_file(adapters(bundle, 9), bundle)
    headers = {**sign(data, bundle.digest, FLEET), SIGNATURE_HEADER: "zz"}
    refused = post(member, data, headers)
    assert refused.status_code == 403 and f"{SIGNATURE_HEADER}: expected 128 hex digits, got 2 characters" in refused.json()["message"]


def test_a_missing_fleet_key_file_stops_the_start_naming_the_flag(har_bundle, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}
    args = [str(har_bundle), "--state-dir", str(tmp_path / "s"), "--port", "0", "--fleet-key", str(tmp_path / "none.pub")]
    out = subprocess.run([sys.executable, "-m", "s2rt", "serve", *args], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and f"--fleet-key {tmp_path / 'none.pub'}: no such public key file" in out.stderr, out.stderr


def versions(d) -> list[int]:
    return [v["version"] for v in d.client.get("/v1/adapters").json()["versions"]]


def test_an_older_signed_version_is_refused_as_a_replay_and_the_active_one_stays(member, har_bundle):
    bundle = open_trusted(har_bundle)
    old, new = adapter_file(adapters(bundle, 1), bundle, round=1), adapter_file(adapters(bundle, 2), bundle, round=2)
    old_headers, new_headers = sign(old, bundle.digest, FLEET, sequence=100), sign(new, bundle.digest, FLEET, sequence=200)
    assert post(member, old, old_headers).status_code == 201
    activated = member.client.post("/v1/adapters/1/activate")
    assert activated.status_code == 200, activated.text
    assert post(member, new, new_headers).status_code == 201
    replayed = post(member, old, old_headers, activate=True)
    assert replayed.status_code == 409 and replayed.json()["error"] == "replayed", replayed.text
    assert "sequence 100 is not above 200" in replayed.json()["message"] and "(version 2)" in replayed.json()["message"]
    assert versions(member) == [0, 1, 2] and member.client.get("/v1/adapters").json()["active"] == 1
    other = adapter_file(adapters(bundle, 3), bundle)  # another file under the newest sequence: refused too
    refused = post(member, other, sign(other, bundle.digest, FLEET, sequence=200))
    assert refused.status_code == 409 and versions(member) == [0, 1, 2], refused.text


def test_the_same_version_sent_again_is_not_stored_twice(member, har_bundle):
    bundle = open_trusted(har_bundle)
    data = adapter_file(adapters(bundle, 4), bundle, round=1)
    headers = sign(data, bundle.digest, FLEET)
    first = post(member, data, headers).json()
    again = post(member, data, headers)
    assert again.status_code == 201 and again.json()["version"] == first["version"] == 1, again.text
    assert "already imported as version 1" in again.json()["reason"] and versions(member) == [0, 1]


def test_the_sequence_is_signed_and_required(member, har_bundle):
    bundle = open_trusted(har_bundle)
    data = adapter_file(adapters(bundle, 5), bundle)
    headers = sign(data, bundle.digest, FLEET, sequence=7)
    cases = {
        "altered": ({**headers, SEQUENCE_HEADER: "8"}, "does not verify for bundle"),
        "missing": ({k: v for k, v in headers.items() if k != SEQUENCE_HEADER}, f"{SEQUENCE_HEADER}: expected a decimal number"),
        "not a number": ({**headers, SEQUENCE_HEADER: "-1"}, "got '-1'"),
    }
    for name, (sent, message) in cases.items():
        refused = post(member, data, sent)
        assert refused.status_code == 403 and message in refused.json()["message"], (name, refused.text)
    assert versions(member) == [0]


def test_the_replay_check_holds_across_a_restart(serve, har_bundle, fleet_pub, tmp_path):
    bundle = open_trusted(har_bundle)
    state = tmp_path / "state"
    first = serve(str(har_bundle), "--fleet-key", str(fleet_pub), "--allow-unauthenticated-control", state=state)
    old, new = adapter_file(adapters(bundle, 1), bundle), adapter_file(adapters(bundle, 2), bundle)
    old_headers = sign(old, bundle.digest, FLEET, sequence=10)
    assert post(first, old, old_headers).status_code == 201
    assert post(first, new, sign(new, bundle.digest, FLEET, sequence=20)).status_code == 201
    first.stop()
    second = serve(str(har_bundle), "--fleet-key", str(fleet_pub), "--allow-unauthenticated-control", state=state)
    assert post(second, old, old_headers).status_code == 409


def test_a_job_trains_with_logit_adjustment_when_asked(member):
    """Two jobs alike but for the option: the same seed, start and samples give other adapters."""
    got = []
    for tau in (0.0, 1.0):
        options = {"start_from": "initial", "epochs": 2, "check_accuracy": False, "commit": "always", "logit_adjustment": tau}
        job = member.client.post("/v1/jobs", json=options)
        assert job.status_code == 202, job.text
        done = wait_job(member.client, job.json()["id"])
        assert done["options"]["logit_adjustment"] == tau
        got.append(arrays_of(member.client.get(f"/v1/adapters/{done['result']['version']}/download").content))
    assert any(not np.array_equal(got[0][k], got[1][k]) for k in got[0])
    refused = member.client.post("/v1/jobs", json={"logit_adjustment": -1})
    assert refused.status_code == 422 and "logit_adjustment" in refused.json()["field"], refused.text
