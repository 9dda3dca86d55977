"""`s2rt serve --trusted-key`: the daemon starts on, accepts uploads of and keeps serving only bundles signed by a trusted key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.keys import test_key
from helpers.tiny import tiny_bundle
from s2rt.bundle import write_bundle

ROOT = Path(__file__).resolve().parents[2]
OWNER, STRANGER = test_key(1), test_key(2)


def written(path: Path, seed: int, key=None) -> Path:
    write_bundle(tiny_bundle(seed=seed), path, key)
    return path


@pytest.fixture
def keys_and_bundles(tmp_path):
    test_key(1).save(tmp_path / "owner")
    test_key(2).save(tmp_path / "stranger")
    files = {
        "unsigned": written(tmp_path / "unsigned.s2l", 1),
        "owner": written(tmp_path / "owner.s2l", 2, OWNER),
        "owner2": written(tmp_path / "owner2.s2l", 3, OWNER),
        "stranger": written(tmp_path / "stranger.s2l", 4, STRANGER),
    }
    return tmp_path, files


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}
    env.pop("S2RT_TRUSTED_KEYS", None)
    return subprocess.run([sys.executable, "-m", "s2rt", "serve", *args], env=env, capture_output=True, text=True, timeout=120)


def test_an_unsigned_bundle_is_not_served(keys_and_bundles):
    folder, files = keys_and_bundles
    out = run_serve(str(files["unsigned"]), "--state-dir", str(folder / "s"), "--port", "0", "--trusted-key", str(folder / "owner.pub"))
    assert out.returncode == 1 and "bundle is not signed" in out.stderr


def test_uploads_must_be_signed_by_a_trusted_key_and_a_revoked_key_stops_its_bundle(serve, keys_and_bundles):
    folder, files = keys_and_bundles
    state = folder / "state"
    d = serve(str(files["owner"]), "--trusted-key", str(folder / "owner.pub"), "--allow-unauthenticated-control", state=state)
    for name, message in (("unsigned", "bundle is not signed"), ("stranger", "not among the trusted keys")):
        refused = d.client.put("/v1/bundle", content=files[name].read_bytes())
        assert refused.status_code == 422 and refused.json()["error"] == "invalid_bundle" and message in refused.json()["message"]
    accepted = d.client.put("/v1/bundle", content=files["owner2"].read_bytes())
    assert accepted.status_code == 200 and accepted.json()["changed"], accepted.text
    assert d.stop() == 0
    # The owner's key is no longer trusted: the deployed bundle is checked again at start and refused.
    out = run_serve("--state-dir", str(state), "--port", "0", "--trusted-key", str(folder / "stranger.pub"))
    assert out.returncode == 1 and f"signed by key {OWNER.key_id}, which is not among the trusted keys" in out.stderr
