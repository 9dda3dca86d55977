"""`s2rt verify` and `--trusted-key` on the other commands; unsigned use without `cryptography`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.keys import test_key
from helpers.tiny import tiny_bundle
from s2rt.bundle import write_bundle
from s2rt.cli import main
from s2rt.trust import ENV_VAR

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def files(tmp_path):
    owner, stranger = test_key(1), test_key(2)
    owner.save(tmp_path / "owner")
    stranger.save(tmp_path / "stranger")
    write_bundle(tiny_bundle(), tmp_path / "unsigned.s2l")
    write_bundle(tiny_bundle(), tmp_path / "signed.s2l", owner)
    write_bundle(tiny_bundle(), tmp_path / "stranger.s2l", stranger)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(20, 6)).astype(np.float32), y=rng.integers(0, 3, 20))
    return tmp_path


def run(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_accepts_the_owners_bundle(files, capsys):
    code, out, _ = run(capsys, "verify", files / "signed.s2l", "--trusted-key", files / "owner.pub", "--json")
    result = json.loads(out)
    assert code == 0 and result["ok"] and result["signer_key_id"] == test_key(1).key_id
    assert result["trusted_key"] == str(files / "owner.pub")


@pytest.mark.parametrize(
    ("bundle", "message"),
    [("unsigned.s2l", "bundle is not signed"), ("stranger.s2l", "not among the trusted keys")],
)
def test_verify_refuses_with_one_line(files, capsys, bundle, message):
    code, out, err = run(capsys, "verify", files / bundle, "--trusted-key", files / "owner.pub")
    assert code == 1 and out == "" and err.startswith("s2rt: error: ") and message in err and err.count("\n") == 1


def test_verify_without_trusted_keys_checks_the_digest_and_says_the_signature_is_unchecked(files, capsys, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    code, out, err = run(capsys, "verify", files / "signed.s2l")
    assert code == 0 and err == "" and "digest ok" in out and "not checked" in out


def test_eval_and_predict_refuse_unsigned_bundles_once_keys_are_trusted(files, capsys, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert run(capsys, "eval", files / "unsigned.s2l", "--data", files / "d.npz", "--json")[0] == 0
    code, _, err = run(capsys, "eval", files / "unsigned.s2l", "--data", files / "d.npz", "--trusted-key", files / "owner.pub")
    assert code == 1 and "bundle is not signed" in err
    code, out, _ = run(capsys, "predict", files / "signed.s2l", "--data", files / "d.npz", "--trusted-key", files / "owner.pub", "--json")
    assert code == 0 and len(json.loads(out)["predictions"]) == 20
    monkeypatch.setenv(ENV_VAR, str(files / "owner.pub"))  # the device's policy, without any option
    code, _, err = run(capsys, "train", files / "stranger.s2l", "--data", files / "d.npz", "-o", files / "a.npz", "--quiet")
    assert code == 1 and "not among the trusted keys" in err and not (files / "a.npz").exists()


BLOCK_CRYPTOGRAPHY = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "cryptography":
            raise ImportError("not installed on this device")
sys.meta_path.insert(0, Block())
from s2rt.cli import main
code = main(sys.argv[1:])
assert "cryptography" not in sys.modules
sys.exit(code)
"""


def test_unsigned_and_signed_bundles_run_without_cryptography_until_a_key_is_trusted(files):
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env["PYTHONPATH"] = str(ROOT / "runtime")

    def s2rt(*args: object) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", BLOCK_CRYPTOGRAPHY, *map(str, args)]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)

    for bundle in ("unsigned.s2l", "signed.s2l"):
        result = s2rt("eval", files / bundle, "--data", files / "d.npz", "--json")
        assert result.returncode == 0, result.stderr
    refused = s2rt("verify", files / "signed.s2l", "--trusted-key", files / "owner.pub")
    assert refused.returncode == 1 and "need the `cryptography` package" in refused.stderr
    assert "pip install 's2l-runtime[sign]'" in refused.stderr
