from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers.tiny import tiny_bundle
from s2rt.bundle import parse_bundle, serialize_bundle
from s2rt.errors import StateError
from s2rt.state import load_adapters, save_adapters


def bundle():
    data, _ = serialize_bundle(tiny_bundle())
    return parse_bundle(data)


def adapters(b, seed=0):
    rng = np.random.default_rng(seed)
    h = b.head
    return [
        (rng.normal(size=(h.rank, t.size)).astype(np.float32), rng.normal(size=(h.num_outputs, h.rank)).astype(np.float32))
        for t in b.taps
    ]


def test_round_trip_with_metadata(tmp_path):
    b = bundle()
    saved = adapters(b)
    save_adapters(tmp_path / "a.npz", saved, b, metrics={"accuracy": 0.9})
    loaded, meta = load_adapters(tmp_path / "a.npz", b)
    assert meta["bundle_digest"] == b.digest and meta["metrics"] == {"accuracy": 0.9}
    for (a0, b0), (a1, b1) in zip(saved, loaded):
        np.testing.assert_array_equal(a0, a1)
        np.testing.assert_array_equal(b0, b1)


def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path):
    b = bundle()
    save_adapters(tmp_path / "a.npz", adapters(b, 0), b)
    save_adapters(tmp_path / "a.npz", adapters(b, 1), b)
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]
    loaded, _ = load_adapters(tmp_path / "a.npz", b)
    np.testing.assert_array_equal(loaded[0][0], adapters(b, 1)[0][0])


def test_adapters_of_another_bundle_are_refused(tmp_path):
    b = bundle()
    save_adapters(tmp_path / "a.npz", adapters(b), b)
    other = dataclasses.replace(b, digest="ff" * 32)
    with pytest.raises(StateError, match="trained for bundle"):
        load_adapters(tmp_path / "a.npz", other)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "shape", "nan"])
def test_damaged_files_are_refused(tmp_path, damage):
    b = bundle()
    path = tmp_path / "a.npz"
    good = adapters(b)
    if damage == "shape":
        good[1] = (good[1][0][:, :-1], good[1][1])
    if damage == "nan":
        good[0][1][0, 0] = np.nan
    save_adapters(path, good, b)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    if damage == "garbage":
        path.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    with pytest.raises(StateError):
        load_adapters(path, b)
