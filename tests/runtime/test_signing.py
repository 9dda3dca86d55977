"""signing + trust: Ed25519 signatures over the envelope, trusted keys, rotation, refusals."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers.keys import test_key
from helpers.tiny import tiny_bundle
from s2rt.bundle import FORMAT_MAJOR, FORMAT_MINOR, parse_bundle, serialize_bundle, write_bundle
from s2rt.bundle.model import SIGNED_SINCE, signing_message
from s2rt.bundle.reader import read_envelope
from s2rt.bundle.signing import PublicKey, SigningKey, key_id, sign_bundle_bytes, sign_bundle_file
from s2rt.bundle.writer import serialize_envelope
from s2rt.errors import BundleError, KeyFileError, SignatureError
from s2rt.session import Model
from s2rt.trust import ENV_VAR, load_trusted_keys, open_trusted, trusted_keys_from

OLD, NEW, STRANGER = test_key(1), test_key(2), test_key(3)


def body_of(data: bytes) -> bytes:
    env = read_envelope(data)
    return data[env.body_start : env.body_end]


def test_signed_bundle_is_accepted_by_its_key_and_keeps_the_unsigned_body():
    unsigned, digest = serialize_bundle(tiny_bundle())
    signed, signed_digest = serialize_bundle(tiny_bundle(), OLD)
    assert signed_digest == digest and body_of(signed) == body_of(unsigned)
    bundle = open_trusted(signed, [OLD.public_key])
    assert bundle.signer_key_id == OLD.key_id == key_id(OLD.public_key.raw) and len(OLD.key_id) == 16
    assert bundle.format_version == (FORMAT_MAJOR, FORMAT_MINOR) and bundle.digest == digest
    assert OLD.public_key.verifies(bundle.signature, signing_message(bundle.format_version, bytes.fromhex(digest)))


def test_without_trusted_keys_any_bundle_reads_and_signed_ones_say_who_signed():
    assert parse_bundle(serialize_bundle(tiny_bundle())[0]).signature == b""
    assert open_trusted(serialize_bundle(tiny_bundle(), STRANGER)[0], None).signer_key_id == STRANGER.key_id


def test_unsigned_bundle_is_refused_when_keys_are_trusted():
    with pytest.raises(SignatureError, match="bundle is not signed.*s2conv sign"):
        open_trusted(serialize_bundle(tiny_bundle())[0], [OLD.public_key])


def test_bundle_of_an_untrusted_signer_is_refused():
    with pytest.raises(SignatureError, match=f"signed by key {STRANGER.key_id}, which is not among the trusted keys"):
        open_trusted(serialize_bundle(tiny_bundle(), STRANGER)[0], [OLD.public_key, NEW.public_key])


def test_rotation_accepts_either_key_while_both_are_trusted():
    trusted = [OLD.public_key, NEW.public_key]
    for key in (OLD, NEW):
        assert open_trusted(serialize_bundle(tiny_bundle(), key)[0], trusted).signer_key_id == key.key_id
    with pytest.raises(SignatureError):
        open_trusted(serialize_bundle(tiny_bundle(), OLD)[0], [NEW.public_key])


def resealed(data: bytes, *, version=None, signature=None, key=None, body=None) -> bytes:
    """The envelope rebuilt with some parts replaced; the digest always matches the body."""
    env = read_envelope(data)
    body = body if body is not None else data[env.body_start : env.body_end]
    return serialize_envelope(
        body,
        version or env.version,
        hashlib.sha256(body).digest(),
        signature if signature is not None else env.signature,
        key if key is not None else env.signer_key_id,
    )


def test_forged_or_replayed_signatures_do_not_verify():
    signed = serialize_bundle(tiny_bundle(), OLD)[0]
    env = read_envelope(signed)
    flipped = bytes([env.signature[0] ^ 1]) + env.signature[1:]
    other_body = body_of(serialize_bundle(tiny_bundle(seed=7))[0])
    forgeries = {
        "flipped signature bit": resealed(signed, signature=flipped),
        "another body, digest recomputed": resealed(signed, body=other_body),
        "version rewritten": resealed(signed, version=(1, 0)),
        "stranger's signature, trusted key's id": resealed(serialize_bundle(tiny_bundle(), STRANGER)[0], key=OLD.key_id),
    }
    for what, data in forgeries.items():
        with pytest.raises(SignatureError, match="does not verify"):
            open_trusted(data, [OLD.public_key])
            pytest.fail(what)


def test_malformed_signature_fields_are_bundle_errors():
    signed = serialize_bundle(tiny_bundle(), OLD)[0]
    with pytest.raises(BundleError, match="signature has 63 bytes"):
        parse_bundle(resealed(signed, signature=read_envelope(signed).signature[:63]))
    with pytest.raises(BundleError, match="signer_key_id"):
        parse_bundle(resealed(signed, key="NOT-HEX-AT-ALL!!"))


def test_signing_rewrites_only_the_envelope_and_upgrades_a_1_0_bundle(monkeypatch):
    import s2rt.bundle.writer as writer

    monkeypatch.setattr(writer, "FORMAT_MINOR", 0)
    old, digest = writer.serialize_bundle(tiny_bundle())
    assert parse_bundle(old).format_version == (1, 0)
    signed = sign_bundle_bytes(old, NEW)
    bundle = open_trusted(signed, [NEW.public_key])
    assert body_of(signed) == body_of(old) and bundle.digest == digest
    assert bundle.format_version == SIGNED_SINCE
    resigned = sign_bundle_bytes(signed, OLD)  # a new signature replaces the old one
    assert open_trusted(resigned, [OLD.public_key]).signer_key_id == OLD.key_id


def test_a_corrupt_bundle_is_never_signed():
    data = bytearray(serialize_bundle(tiny_bundle())[0])
    data[len(data) // 2] ^= 0x10
    with pytest.raises(BundleError):
        sign_bundle_bytes(bytes(data), OLD)


def test_sign_file_in_place_and_model_open_with_trusted_keys(tmp_path):
    path = tmp_path / "b.s2l"
    write_bundle(tiny_bundle(), path)
    with pytest.raises(SignatureError):
        Model.open(path, trusted_keys=[OLD.public_key])
    sign_bundle_file(path, OLD)
    model = Model.open(path, trusted_keys=[OLD.public_key])
    assert model.bundle.signer_key_id == OLD.key_id
    assert Model.open(path).bundle.signer_key_id == OLD.key_id  # no keys: no check


def test_keygen_files_modes_and_round_trip(tmp_path):
    key = SigningKey.generate()
    private, public = key.save(tmp_path / "owner")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and public.name == "owner.pub"
    assert SigningKey.load(private).key_id == key.key_id == PublicKey.load(public).key_id
    with pytest.raises(KeyFileError, match="already exists"):
        SigningKey.generate().save(private)


def test_bad_key_files_are_named(tmp_path):
    test_key(1).save(tmp_path / "k")
    (tmp_path / "garbage.pub").write_bytes(b"\x00" * 40)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "rsa.pub").write_bytes(pem)
    cases = {
        tmp_path / "k": "is a private key; give its public key",
        tmp_path / "garbage.pub": "not a PEM public key",
        tmp_path / "rsa.pub": "expected an Ed25519 public key",
        tmp_path / "missing.pub": "no such public key file",
    }
    for path, message in cases.items():
        with pytest.raises(KeyFileError, match=message):
            PublicKey.load(path)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        SigningKey.load(tmp_path / "k.pub")


def test_trusted_keys_from_files_folders_and_the_environment(tmp_path):
    (tmp_path / "keys").mkdir()
    test_key(1).save(tmp_path / "keys" / "old")
    test_key(2).save(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    assert {k.key_id for k in load_trusted_keys([tmp_path / "keys"])} == {OLD.key_id}
    env = {ENV_VAR: os.pathsep.join([str(tmp_path / "keys"), str(tmp_path / "new.pub")])}
    assert {k.key_id for k in trusted_keys_from(None, env)} == {OLD.key_id, NEW.key_id}
    assert len(trusted_keys_from([str(tmp_path / "new.pub")], env)) == 2  # each key once
    assert trusted_keys_from(None, {}) == ()
    with pytest.raises(KeyFileError, match="holds no \\*.pub files"):
        load_trusted_keys([tmp_path / "empty"])
