"""Open-set workloads (`s2models.data.open_set`) and the committed har_open reference model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from s2models.data import Split, Workload, har, open_set

MODELS = Path(__file__).resolve().parents[2] / "models"


def toy() -> Workload:
    def split(y):
        y = np.array(y, dtype=np.int64)
        return Split(np.arange(len(y) * 2, dtype=np.float32).reshape(-1, 2), y, np.arange(len(y)))

    return Workload("toy", "test", ("a", "b", "c", "d"), split([0, 1, 2, 3]), split([3, 2, 1]), split([0, 1, 2, 3, 3]), split([2, 1]))


def test_hidden_classes_leave_pretraining_and_come_last_on_the_device():
    w = open_set.hide_classes(toy(), ("b",), "toy_open")
    assert w.name == "toy_open" and w.labels == ("a", "c", "d") and open_set.device_labels(w) == ("a", "c", "d", "b")
    assert w.train.y.tolist() == [0, 1, 2] and w.train.x.tolist() == [[0, 1], [4, 5], [6, 7]]
    assert w.val.y.tolist() == [2, 1]
    names = np.array(open_set.device_labels(w))
    assert names[w.ft.y].tolist() == ["a", "b", "c", "d", "d"] and names[w.test.y].tolist() == ["c", "b"]


@pytest.mark.parametrize("hidden", [(), ("x",), ("a", "a"), ("a", "b", "c")])
def test_bad_hidden_classes_are_refused(hidden):
    with pytest.raises(ValueError, match="hide_classes"):
        open_set.hide_classes(toy(), hidden, "t")


def test_committed_har_open_is_what_the_code_builds():
    entry = json.loads((MODELS / "open_set.json").read_text())["har_open"]
    hidden = tuple(entry["device_only_classes"])
    w = open_set.hide_classes(har.load(), hidden, "har_open")
    assert hidden == ("TRAP", "ROW") and entry["classes"] == list(w.labels) and w.sizes() == entry["samples"]
    model = onnx.load(MODELS / entry["onnx"])
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == len(w.labels)
    names = np.array(open_set.device_labels(w))
    for split in ("ft", "test"):
        with np.load(MODELS / entry["data"][split], allow_pickle=False) as data:
            np.testing.assert_allclose(data["x"], getattr(w, split).x, rtol=1e-6, atol=1e-6)
            assert data["y"].dtype.kind == "U" and data["y"].tolist() == names[getattr(w, split).y].tolist()
            assert set(hidden) <= set(data["y"].tolist())
    assert (MODELS / entry["data"]["labels"]).read_text().split() == list(w.labels)
