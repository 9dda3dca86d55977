from __future__ import annotations

import numpy as np
import pytest
from s2rt.bundle import InputSignature
from s2rt.data import load_samples
from s2rt.errors import RuntimeInputError

SIG = InputSignature("x", (4,))


def test_npz_with_labels(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.ones((5, 4), np.float64), y=np.arange(5) % 3)
    s = load_samples(p, SIG, num_classes=3, require_labels=True)
    assert s.x.dtype == np.float32 and s.x.shape == (5, 4)
    assert s.y.tolist() == [0, 1, 2, 0, 1]


def test_npz_flat_samples_are_reshaped_to_the_signature(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.ones((2, 4)))
    s = load_samples(p, InputSignature("x", (2, 2)))
    assert s.x.shape == (2, 2, 2) and s.y is None


def test_csv_with_header_and_label_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("label,a,b,c,d\n1,0.5,1,2,3\n0,4,5,6,7\n")
    s = load_samples(p, SIG, num_classes=2)
    assert s.y.tolist() == [1, 0]
    assert s.x[1].tolist() == [4, 5, 6, 7]


def test_csv_without_header_label_last_or_absent(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("1,2,3,4,2\n5,6,7,8,1\n")
    assert load_samples(p, SIG).y.tolist() == [2, 1]
    p.write_text("1,2,3,4\n")
    assert load_samples(p, SIG).y is None


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"x": np.ones((3, 5))}, "expects"),
        ({"x": np.array([[1, 2, 3, np.nan]])}, "NaN"),
        ({"x": np.ones((2, 4)), "y": np.array([0, 7])}, "label 7 is outside"),
        ({"x": np.ones((2, 4)), "y": np.array([0.5, 1])}, "whole class"),
        ({"x": np.ones((2, 4)), "y": np.array([0])}, "1 labels for 2 samples"),
        ({"features": np.ones((2, 4))}, "expected 'x'"),
        ({"x": np.ones((0, 4))}, "no samples"),
    ],
)
def test_bad_npz_is_named(tmp_path, arrays, match):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    with pytest.raises(RuntimeInputError, match=match):
        load_samples(p, SIG, num_classes=3)


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.array([object()] * 4, dtype=object).reshape(1, 4))
    with pytest.raises(RuntimeInputError, match="not a readable .npz"):
        load_samples(p, SIG)


def test_training_needs_labels(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.ones((2, 4)))
    with pytest.raises(RuntimeInputError, match="no labels"):
        load_samples(p, SIG, require_labels=True)


@pytest.mark.parametrize("content, match", [("1,2,x,4\n", "not a number"), ("1,2,3,4\n1,2\n", "row 2"), ("1,2\n", "expected 4")])
def test_bad_csv_is_named(tmp_path, content, match):
    p = tmp_path / "d.csv"
    p.write_text(content)
    with pytest.raises(RuntimeInputError, match=match):
        load_samples(p, SIG)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(RuntimeInputError, match="no such data file"):
        load_samples(tmp_path / "none.npz", SIG)
    (tmp_path / "d.json").write_text("{}")
    with pytest.raises(RuntimeInputError, match="unknown data file type"):
        load_samples(tmp_path / "d.json", SIG)


def test_npz_with_per_sample_ids_beside_x_and_y_is_read(tmp_path):
    """The committed device files carry `labels`, `subject` and `recording` too (s2models); s2rt reads x and y."""
    p = tmp_path / "d.npz"
    ids = {"subject": np.array([6, 6, 7]), "recording": np.arange(3)}
    np.savez(p, x=np.ones((3, 4)), y=np.array([0, 1, 2]), labels=np.array(["a", "b", "c"]), **ids)
    s = load_samples(p, SIG, num_classes=3, require_labels=True)
    assert s.x.shape == (3, 4) and s.y.tolist() == [0, 1, 2]
