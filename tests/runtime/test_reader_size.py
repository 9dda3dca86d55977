"""A bundle file ends with its body and at most its zero padding: appended bytes are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.keys import test_key
from helpers.mutate import body_of, reseal
from helpers.tiny import tiny_bundle
from s2rt.bundle import parse_bundle, read_bundle, write_bundle
from s2rt.errors import BundleError

GOLDEN = sorted(p for p in (Path(__file__).resolve().parents[1] / "golden").glob("v1.*.s2l"))


def files(tmp_path: Path) -> list[bytes]:
    write_bundle(tiny_bundle(), tmp_path / "u.s2l")
    write_bundle(tiny_bundle(), tmp_path / "s.s2l", test_key(1))
    return [p.read_bytes() for p in (*GOLDEN, tmp_path / "u.s2l", tmp_path / "s.s2l")]


@pytest.mark.parametrize("tail", [b"\x00", b"\x01", b"\x00" * 15, b"\x00" * 16, b"junk" * 100])
def test_bytes_after_the_body_are_refused_naming_the_size(tmp_path, tail):
    for data in files(tmp_path):
        parse_bundle(data)
        with pytest.raises(BundleError, match=f"size mismatch: the file is {len(data) + len(tail):,} bytes but its body ends"):
            parse_bundle(data + tail, "appended.s2l")
    (tmp_path / "a.s2l").write_bytes(data + tail)
    with pytest.raises(BundleError, match="a.s2l: .*trailing bytes"):
        read_bundle(tmp_path / "a.s2l")


def test_the_writers_zero_padding_after_a_body_is_accepted_and_nothing_else(tmp_path):
    body = body_of(files(tmp_path)[-1])
    padded = reseal(body + b"\x00" * 4)  # a body of 16k + 4 bytes: the envelope pads the file to 16
    assert len(padded) % 16 == 0
    parse_bundle(padded)
    with pytest.raises(BundleError, match="size mismatch"):
        parse_bundle(padded[:-1] + b"\x01")
