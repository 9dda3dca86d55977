"""Signatures survive deploy and restart: `s2conv sign` keeps a bundle's digest, so the daemon
tells copies of one body apart by their whole file and keeps the signed copy."""

from __future__ import annotations

import json

import pytest
from helpers.keys import test_key
from helpers.tiny import tiny_bundle
from s2rt.bundle import parse_bundle, write_bundle
from s2rt.bundle.signing import sign_bundle_file

KEY = test_key(1)


@pytest.fixture
def files(tmp_path):
    KEY.save(tmp_path / "owner")
    unsigned = tmp_path / "model.s2l"
    write_bundle(tiny_bundle(), unsigned)
    signed = tmp_path / "signed.s2l"
    sign_bundle_file(unsigned, KEY, signed)
    return unsigned, signed, tmp_path / "owner.pub"


def served(d) -> bytes:  # type: ignore[no-untyped-def]
    return d.client.get("/v1/bundle").content


def test_restart_with_a_trusted_key_on_the_signed_file_serves_it(serve, files, tmp_path):
    unsigned, signed, pub = files
    assert parse_bundle(signed.read_bytes()).digest == parse_bundle(unsigned.read_bytes()).digest
    d = serve(str(unsigned))
    assert d.client.post("/v1/samples", json={"x": [0.5] * 6, "y": 1}).status_code == 201
    assert d.stop() == 0

    d = serve(str(signed), "--trusted-key", str(pub))  # exited 1, "bundle is not signed", reading its own unsigned copy
    assert served(d) == signed.read_bytes()
    assert d.client.get("/v1/samples").json()["count"] == 1, "the same body keeps its samples"
    assert d.stop() == 0
    pointer = json.loads((tmp_path / "state" / "deploy.json").read_text())
    assert set((tmp_path / "state" / "bundles").iterdir()) == {tmp_path / "state" / "bundles" / f"{pointer['current']}.s2l"}

    for args in ((), (str(signed),)):  # the stored copy is the signed one now
        d = serve(*args, "--trusted-key", str(pub))
        assert served(d) == signed.read_bytes()
        assert d.stop() == 0


def test_uploading_the_signed_copy_replaces_the_unsigned_one(serve, files, tmp_path):
    unsigned, signed, pub = files
    sock = tmp_path / "s.sock"
    d = serve(str(unsigned), "--uds", str(sock), "--allow-unsigned-deploy")
    digest = parse_bundle(unsigned.read_bytes()).digest
    up = d.client.put("/v1/bundle", content=signed.read_bytes())
    assert up.status_code == 200 and up.json() == {"bundle_digest": digest, "changed": True, "samples": 0}  # was changed: false
    assert served(d) == signed.read_bytes()
    again = d.client.put("/v1/bundle", content=unsigned.read_bytes()).json()
    assert again["changed"] is False and served(d) == signed.read_bytes(), "an unsigned copy never replaces a signed one"
    assert d.stop() == 0

    # Restarting on the file it was first started on keeps the signed copy, with or without a trusted key.
    for args in ((str(unsigned),), ("--trusted-key", str(pub))):
        d = serve(*args, "--uds", str(sock))
        assert served(d) == signed.read_bytes()
        assert d.stop() == 0


def test_an_unsigned_upload_cannot_outlive_a_trusted_key_restart_on_a_signed_file(serve, files, tmp_path):
    """The stored current bundle no longer verifies: the daemon falls back to the verified file it was named, not exit 1."""
    unsigned, signed, pub = files
    other = tmp_path / "other.s2l"
    write_bundle(tiny_bundle(seed=5), other)
    sock = tmp_path / "s.sock"
    d = serve(str(signed), "--uds", str(sock), "--allow-unsigned-deploy")
    assert d.client.put("/v1/bundle", content=other.read_bytes()).json()["changed"] is True
    assert d.stop() == 0
    d = serve(str(signed), "--uds", str(sock), "--trusted-key", str(pub))
    assert served(d) == signed.read_bytes()
    assert any(e.get("level") == "error" and "bundle is not signed" in e["msg"] for e in d.events())


@pytest.mark.parametrize("trusted", [False, True])
def test_a_state_dir_from_before_file_identities_takes_the_signed_copy(files, tmp_path, trusted):
    """deploy.json written by an older daemon names the command-line file by its body digest only."""
    from s2rt.bundle.signing import PublicKey
    from s2rt.serve.deploy import BundleShelf

    unsigned, signed, pub = files
    digest = parse_bundle(unsigned.read_bytes()).digest
    state = tmp_path / ("t" if trusted else "u")
    (state / "bundles").mkdir(parents=True)
    (state / "bundles" / f"{digest}.s2l").write_bytes(unsigned.read_bytes())
    (state / "deploy.json").write_text(json.dumps({"current": digest, "given": digest, "previous": None}))
    shelf = BundleShelf(state, (PublicKey.load(pub),) if trusted else ())
    data, bundle = shelf.startup(signed)
    assert data == signed.read_bytes() and bundle.signer_key_id == KEY.key_id
    assert (state / "bundles" / f"{digest}.s2l").read_bytes() == signed.read_bytes()
    assert shelf.startup(None)[0] == signed.read_bytes()
