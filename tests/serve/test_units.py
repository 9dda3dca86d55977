"""In-process checks of the daemon's parts: .npy parsing, labels, held-out split, metrics text."""

from __future__ import annotations

import io

import numpy as np
import pytest
from s2rt.bundle import InputSignature
from s2rt.errors import StateError
from s2rt.serve.db import Database
from s2rt.serve.errors import ApiError
from s2rt.serve.gate import held_out
from s2rt.serve.inputs import labels_and_new_classes, labels_from_json, npy_array, samples_from_json, samples_from_npy
from s2rt.serve.metrics import Metrics
from s2rt.serve.samples import SampleStore

SIG = InputSignature("x", (2, 3))


def npy(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, a, allow_pickle=False)
    return buffer.getvalue()


def test_npy_orders_versions_and_dtypes():
    a = np.arange(24, dtype=np.float64).reshape(4, 2, 3)
    np.testing.assert_array_equal(npy_array(npy(np.asfortranarray(a)), "body"), a)
    x, single = samples_from_npy(npy(a[0]), SIG)
    assert single and x.shape == (1, 2, 3) and x.dtype == np.float32
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, a, version=(2, 0))
    np.testing.assert_array_equal(npy_array(buffer.getvalue(), "body"), a)


def test_npy_header_claiming_a_huge_array_is_refused_without_allocating():
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 48), }"
    body = b"\x93NUMPY\x01\x00" + len(header + b"\n").to_bytes(2, "little") + header + b"\n" + b"\0" * 64
    with pytest.raises(ApiError, match="data bytes follow"):
        npy_array(body, "body")


def test_json_samples_and_labels():
    x, single = samples_from_json([[1, 2, 3], [4, 5, 6]], SIG)
    assert single and x.shape == (1, 2, 3)
    batch, single = samples_from_json([[[1, 2, 3], [4, 5, 6]]] * 3, SIG)
    assert not single and batch.shape == (3, 2, 3)
    labels = ("cat", "dog")
    assert labels_from_json(["dog", 0, "cat"], labels, 3, False).tolist() == [1, 0, 0]
    with pytest.raises(ApiError) as e:
        labels_from_json(["dog", "cow", 0], labels, 3, False)
    assert e.value.field == "y[1]" and "cow" in e.value.message


def test_new_class_names_are_numbered_after_the_known_labels_when_allowed():
    labels = ("cat", "dog")
    y, added = labels_and_new_classes(["dog", "cow", "cow", "eel", 3, "cat"], labels, 6, False, allow_new=True)
    assert y.tolist() == [1, 2, 2, 3, 3, 0] and added == ("cow", "eel")
    with pytest.raises(ApiError) as e:
        labels_and_new_classes(["cow"], labels, 1, False)
    assert e.value.field == "y[0]" and "--allow-new-classes" in e.value.message
    with pytest.raises(ApiError) as e:
        labels_and_new_classes(["dog", "z" * 201], labels, 2, False, allow_new=True)
    assert e.value.status == 422 and e.value.field == "y[1]" and "1..200 characters" in e.value.message
    with pytest.raises(ApiError, match="outside 0..1"):
        labels_and_new_classes(2, labels, 1, True, allow_new=True)  # an index names a class that exists


def test_new_classes_are_stored_with_their_samples_and_numbered_once(tmp_path):
    store = SampleStore(Database(tmp_path / "s.sqlite"))
    x = np.zeros((2, 3), np.float32)
    store.add("sig", x, np.array([0, 2]), ("cow",), known=0)
    store.add("sig", x, np.array([3, 2]), ("eel",), known=1)
    assert store.new_classes("sig") == ("cow", "eel") and store.new_classes("other") == ()
    with pytest.raises(StateError, match="changed while the samples were labelled"):
        store.add("sig", x, np.array([4, 4]), ("gnu",), known=1)  # numbered against a stale list
    assert store.new_classes("sig") == ("cow", "eel") and store.count("sig") == 4  # nothing of it was stored
    store.db.close()


def test_held_out_split_is_fixed_by_content():
    x = np.random.default_rng(0).normal(size=(2000, 4)).astype(np.float32)
    mask = held_out(x, 0.2)
    assert 0.17 < mask.mean() < 0.23
    np.testing.assert_array_equal(held_out(x[::-1].copy(), 0.2), mask[::-1])
    assert not held_out(x, 0.0).any()


def test_metrics_text_format():
    m = Metrics()
    m.requests.inc(route='/v1/"x"', method="GET", status="200")
    m.latency.observe(0.003, route="/v1/x")
    m.latency.observe(20.0, route="/v1/x")
    m.gauge("s2rt_answer", "a gauge", lambda: 42)
    text = m.render()
    assert 's2rt_http_requests_total{method="GET",route="/v1/\\"x\\"",status="200"} 1' in text
    assert 's2rt_http_request_duration_seconds_bucket{route="/v1/x",le="0.005"} 1' in text
    assert 's2rt_http_request_duration_seconds_bucket{route="/v1/x",le="+Inf"} 2' in text
    assert 's2rt_http_request_duration_seconds_count{route="/v1/x"} 2' in text
    assert "s2rt_answer 42" in text and "s2rt_predictions_total 0" in text


def test_systemd_unit_runs_the_daemon_with_a_bounded_graceful_stop():
    import configparser
    import shlex
    from pathlib import Path

    from s2rt.cli import _parser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(Path(__file__).resolve().parents[2] / "runtime" / "deploy" / "s2rt.service")
    service = unit["Service"]
    command = shlex.split(service["ExecStart"])
    assert command[0].endswith("/s2rt")
    args = _parser().parse_args(command[1:])
    assert args.command == "serve" and args.state_dir == "/var/lib/s2rt" and args.uds
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 2 * args.shutdown_timeout
