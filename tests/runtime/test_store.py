"""Adapter version store: atomic commits and activation, rollback, and never serving a bad file."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from helpers.tiny import tiny_bundle
from s2rt.errors import StateError
from s2rt.state import HeadState
from s2rt.store import AdapterStore, UnknownVersionError


def adapters(bundle, value: float) -> HeadState:
    h = bundle.head
    return HeadState.skip2lora([(a + value, np.full((h.num_outputs, h.rank), value, np.float32)) for a in h.a_init])


def same(got: HeadState, want: HeadState) -> bool:
    pairs = list(zip(got.adapters(), want.adapters()))
    equal = all(np.array_equal(a, c) and np.array_equal(b, d) for (a, b), (c, d) in pairs)
    return got.method == want.method and len(pairs) > 0 and equal


@pytest.fixture
def bundle():
    b = tiny_bundle()
    object.__setattr__(b, "digest", "ab" * 32)
    return b


def test_commit_activate_and_reopen(tmp_path, bundle):
    store = AdapterStore(tmp_path, bundle)
    assert store.active == 0 and store.history == [0]
    assert same(store.load(0), store.initial())
    v1 = store.commit(adapters(bundle, 0.1), metrics={"val_accuracy": 0.5})
    assert (v1, store.active) == (1, 0), "a committed version is not active until activated"
    store.activate(v1)
    v2 = store.commit(adapters(bundle, 0.2))
    store.activate(v2)
    again = AdapterStore(tmp_path, bundle)
    assert (again.active, again.history) == (2, [0, 1, 2])
    number, loaded = again.load_active()
    assert number == 2 and same(loaded, adapters(bundle, 0.2))
    assert again.info(1).meta["metrics"] == {"val_accuracy": 0.5}
    assert again.commit(adapters(bundle, 0.3)) == 3


def test_a_crash_between_commit_and_activate_keeps_the_old_version(tmp_path, bundle):
    store = AdapterStore(tmp_path, bundle)
    store.activate(store.commit(adapters(bundle, 0.1)))
    store.commit(adapters(bundle, 0.2))  # the daemon dies here, before activate
    (tmp_path / bundle.digest[:16] / ".v000003.npz.x1y2.tmp").write_bytes(b"half a file")  # and here, mid-write
    again = AdapterStore(tmp_path, bundle)
    assert again.load_active()[0] == 1
    assert [v.number for v in again.versions()] == [0, 1, 2] and again.info(2).error is None
    assert not list((tmp_path / bundle.digest[:16]).glob("*.tmp"))


def test_a_corrupt_active_version_falls_back_and_is_logged(tmp_path, bundle, caplog):
    store = AdapterStore(tmp_path, bundle)
    for value in (0.1, 0.2, 0.3):
        store.activate(store.commit(adapters(bundle, value)))
    (tmp_path / bundle.digest[:16] / "v000003.npz").write_bytes(b"PK\x03\x04 truncated")
    with caplog.at_level(logging.ERROR, logger="s2rt.store"):
        again = AdapterStore(tmp_path, bundle)
        number, loaded = again.load_active()
    assert number == 2 and same(loaded, adapters(bundle, 0.2))
    assert any("version 3" in r.getMessage() for r in caplog.records)
    assert again.info(3).error and again.active == 2
    assert json.loads((tmp_path / bundle.digest[:16] / "index.json").read_text())["active"] == 2
    with pytest.raises(StateError):
        again.activate(3)
    assert again.active == 2


def test_rollback_skips_bad_versions_and_stops_at_the_first(tmp_path, bundle):
    store = AdapterStore(tmp_path, bundle)
    for value in (0.1, 0.2, 0.3):
        store.activate(store.commit(adapters(bundle, value)))
    (tmp_path / bundle.digest[:16] / "v000002.npz").unlink()
    assert store.rollback()[0] == 1
    assert store.rollback()[0] == 0
    with pytest.raises(StateError, match="nothing to roll back"):
        store.rollback()
    with pytest.raises(UnknownVersionError):
        store.activate(42)


def test_another_bundles_versions_and_a_damaged_index(tmp_path, bundle):
    store = AdapterStore(tmp_path, bundle)
    store.activate(store.commit(adapters(bundle, 0.1)))
    store.activate(store.commit(adapters(bundle, 0.2)))
    (tmp_path / bundle.digest[:16] / "index.json").write_text("{not json")
    again = AdapterStore(tmp_path, bundle)
    assert again.load_active()[0] == 2
    assert json.loads((tmp_path / bundle.digest[:16] / "index.json").read_text())["history"] == [1, 2], "the index is repaired"
    other = tiny_bundle()
    object.__setattr__(other, "digest", "ab" * 31 + "cd")  # same directory prefix, another bundle
    foreign = AdapterStore(tmp_path, other)
    assert foreign.load_active()[0] == 0 and foreign.info(1).error
