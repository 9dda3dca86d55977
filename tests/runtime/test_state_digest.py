"""state: the digest catches what the zip CRC cannot (a rewritten, still well-formed file); the store skips such a version."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from helpers.tiny import tiny_bundle
from s2rt.errors import StateError
from s2rt.npz import read_npz
from s2rt.state import DIGEST, HeadState, load_adapters, save_adapters
from s2rt.store import AdapterStore


@pytest.fixture
def bundle():
    b = tiny_bundle()
    object.__setattr__(b, "digest", "cd" * 32)
    return b


def adapters(bundle, value: float):
    return [(a + value, np.full((bundle.head.num_outputs, bundle.head.rank), value, np.float32)) for a in bundle.head.a_init]


def rewrite(path, change) -> None:
    """Rewrite an adapter file as a valid npz (fresh zip CRCs) with `change` applied to its members, keeping the old digest."""
    arrays = read_npz(path, StateError, "adapter file")
    change(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def flip_one_bit(arrays) -> None:
    b = arrays["B.1"].copy()
    b.view(np.uint32)[0, 0] ^= 1 << 3
    arrays["B.1"] = b


def edit_metrics(arrays) -> None:
    meta = json.loads(arrays["meta"].tobytes())
    meta["metrics"] = {"val_accuracy": 0.99}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)


@pytest.mark.parametrize("change", [flip_one_bit, edit_metrics, lambda a: a.pop(DIGEST)])
def test_a_well_formed_but_altered_file_is_refused(tmp_path, bundle, change):
    path = tmp_path / "a.npz"
    save_adapters(path, adapters(bundle, 0.5), bundle, metrics={"val_accuracy": 0.5})
    load_adapters(path, bundle)
    rewrite(path, change)
    with pytest.raises(StateError, match="digest mismatch|has no digest"):
        load_adapters(path, bundle)


def test_the_digest_is_stable_across_a_rewrite_that_changes_nothing(tmp_path, bundle):
    path = tmp_path / "a.npz"
    save_adapters(path, adapters(bundle, 0.5), bundle)
    rewrite(path, lambda arrays: None)
    loaded, _ = load_adapters(path, bundle)
    np.testing.assert_array_equal(loaded[1][1], adapters(bundle, 0.5)[1][1])


def test_the_store_skips_a_bit_rotted_version_for_the_previous_good_one_and_logs_it(tmp_path, bundle, caplog):
    store = AdapterStore(tmp_path, bundle)
    for value in (0.1, 0.2):
        store.activate(store.commit(HeadState.skip2lora(adapters(bundle, value))))
    rewrite(store.path(2), flip_one_bit)
    with caplog.at_level(logging.ERROR, logger="s2rt.store"):
        number, loaded = AdapterStore(tmp_path, bundle).load_active()
    assert number == 1
    np.testing.assert_array_equal(loaded.adapters()[0][0], adapters(bundle, 0.1)[0][0])
    assert any("version 2" in r.getMessage() and "digest mismatch" in r.getMessage() for r in caplog.records)
