"""`s2conv keygen`, `s2conv sign`, `--sign-key` at conversion, the signer in `inspect`; then `s2rt verify`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from conv_graphs import gemm_chain
from s2rt.bundle import read_bundle
from s2rt.bundle.reader import read_bundle_bytes, read_envelope
from s2rt.bundle.signing import PublicKey

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime"), str(ROOT / "converter")])}
ENV.pop("S2RT_TRUSTED_KEYS", None)


def tool(module: str, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=120)


def test_keygen_convert_signed_sign_again_and_verify_on_the_device(tmp_path):
    made = tool("s2conv.cli", "keygen", "-o", tmp_path / "owner")
    assert made.returncode == 0, made.stderr
    owner = PublicKey.load(tmp_path / "owner.pub")
    assert owner.key_id in made.stdout and stat.S_IMODE((tmp_path / "owner").stat().st_mode) == 0o600
    again = tool("s2conv.cli", "keygen", "-o", tmp_path / "owner")
    assert again.returncode == 1 and "already exists" in again.stderr

    model = gemm_chain().save(tmp_path)
    converted = tool("s2conv.cli", model, "-o", tmp_path / "b.s2l", "--sign-key", tmp_path / "owner")
    assert converted.returncode == 0, converted.stderr
    assert f"signed by key {owner.key_id}" in converted.stdout
    assert read_bundle(tmp_path / "b.s2l").signer_key_id == owner.key_id

    inspected = tool("s2conv.cli", "inspect", tmp_path / "b.s2l", "--json")
    assert json.loads(inspected.stdout)["signature"] == {"signed": True, "signer_key_id": owner.key_id}
    assert f"signer key id {owner.key_id}" in tool("s2conv.cli", "inspect", tmp_path / "b.s2l").stdout

    tool("s2conv.cli", "keygen", "-o", tmp_path / "next")
    body_before = _body(tmp_path / "b.s2l")
    resigned = tool("s2conv.cli", "sign", tmp_path / "b.s2l", "--key", tmp_path / "next", "-o", tmp_path / "c.s2l")
    assert resigned.returncode == 0, resigned.stderr
    assert _body(tmp_path / "c.s2l") == body_before

    ok = tool("s2rt.cli", "verify", tmp_path / "c.s2l", "--trusted-key", tmp_path / "owner.pub", "--trusted-key", tmp_path / "next.pub")
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    refused = tool("s2rt.cli", "verify", tmp_path / "c.s2l", "--trusted-key", tmp_path / "owner.pub")
    assert refused.returncode == 1 and "not among the trusted keys" in refused.stderr


def test_signing_with_a_bad_key_fails_before_converting(tmp_path):
    model = gemm_chain().save(tmp_path)
    (tmp_path / "key").write_text("not a key")
    result = tool("s2conv.cli", model, "-o", tmp_path / "b.s2l", "--sign-key", tmp_path / "key")
    assert result.returncode == 1 and "not a PEM private key" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "b.s2l").exists()


def _body(path: Path) -> bytes:
    data = read_bundle_bytes(path)
    env = read_envelope(data)
    return data[env.body_start : env.body_end]
