"""atomic: output files get the umask's mode (0644 under 022), not mkstemp's 0600; private keys stay 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.tiny import tiny_bundle
from s2rt.atomic import PRIVATE_MODE, atomic_write_bytes
from s2rt.bundle import write_bundle
from s2rt.bundle.signing import SigningKey
from s2rt.session import Model


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_a_written_file_follows_the_umask(tmp_path, umask):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert mode(tmp_path / "a.bin") == 0o666 & ~umask
    atomic_write_bytes(tmp_path / "a.bin", b"y")  # replacing keeps the rule
    assert mode(tmp_path / "a.bin") == 0o666 & ~umask and (tmp_path / "a.bin").read_bytes() == b"y"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temporary file left


def test_a_private_mode_is_kept_whatever_the_umask(tmp_path, umask):
    atomic_write_bytes(tmp_path / "secret", b"x", mode=PRIVATE_MODE)
    assert mode(tmp_path / "secret") == 0o600 & ~umask


def test_bundles_adapters_and_public_keys_are_readable_private_keys_are_not(tmp_path):
    old = os.umask(0o022)
    try:
        write_bundle(tiny_bundle(), tmp_path / "b.s2l")
        Model.open(tmp_path / "b.s2l").save_adapters(tmp_path / "a.npz")
        private, public = SigningKey.generate().save(tmp_path / "key")
    finally:
        os.umask(old)
    assert mode(tmp_path / "b.s2l") == 0o644
    assert mode(tmp_path / "a.npz") == 0o644
    assert mode(Path(public)) == 0o644
    assert mode(Path(private)) == 0o600
