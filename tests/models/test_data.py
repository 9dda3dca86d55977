"""s2models.data: split sizes and disjointness, determinism, the shift, the npz format."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from s2models.data import Split, Workload, digits, har, save_npz

SPLITS = ("train", "val", "ft", "test")


@functools.cache
def har_workload(**overrides: object) -> Workload:
    return har.load(har.HarConfig(**overrides))  # type: ignore[arg-type]


@functools.cache
def digits_workload(**overrides: object) -> Workload:
    return digits.load(digits.DigitsConfig(**overrides))  # type: ignore[arg-type]


def groups(workload: Workload, name: str) -> set[int]:
    return set(getattr(workload, name).group.tolist())


def assert_same(a: Workload, b: Workload) -> None:
    for name in SPLITS:
        for field in ("x", "y", "group"):
            np.testing.assert_array_equal(getattr(getattr(a, name), field), getattr(getattr(b, name), field))


# --- HAR ---------------------------------------------------------------------------------


def test_har_features_are_eight_statistics_per_axis():
    assert len(har.FEATURES) == 8 and len(har.FEATURE_NAMES) == 48
    signal = np.tile(np.arange(6, dtype=np.float64), (250, 1))  # axis k is the constant k
    features = har.window_features(signal)
    assert features.shape == (4, 48)  # (250 - 100) // 50 + 1 windows
    per_axis = features[0].reshape(6, 8)
    expected = {
        "mean": np.arange(6),
        "std": 0,
        "min": np.arange(6),
        "max": np.arange(6),
        "p25": np.arange(6),
        "p75": np.arange(6),
        "mean_abs_diff": 0,
        "rms": np.arange(6),
    }
    for i, name in enumerate(har.FEATURES):
        np.testing.assert_allclose(per_axis[:, i], expected[name], atol=1e-12, err_msg=name)


def test_har_split_sizes_and_subjects():
    w = har_workload()
    sizes = w.sizes()
    assert sizes == {"train": 1684, "val": 437, "ft": 1173, "test": 1243}
    assert w.n_features == 48 and len(w.labels) == 7
    recordings = har.read_recordings()
    for name, subjects in (
        ("train", har.PRETRAIN_SUBJECTS),
        ("val", har.PRETRAIN_SUBJECTS),
        ("ft", har.DEVICE_SUBJECTS),
        ("test", har.DEVICE_SUBJECTS),
    ):
        assert set(recordings.subject[sorted(groups(w, name))].tolist()) == set(subjects), name
        assert set(getattr(w, name).y.tolist()) == set(range(7)), name


@pytest.mark.parametrize("n_windows", range(3, 60))
@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_har_time_cut_leaves_no_shared_sample(n_windows, fraction):
    before, after = har.time_cut(n_windows, fraction)
    earlier, later = range(n_windows)[before], range(n_windows)[after]
    assert len(earlier) >= 1 and len(later) >= 1 and len(earlier) + len(later) == n_windows - 1
    last_sample_before = earlier[-1] * har.STEP + har.WINDOW - 1
    assert last_sample_before < later[0] * har.STEP


def test_har_time_split_cuts_every_recording_once():
    w, recordings = har_workload(), har.read_recordings()
    for early, late in (("train", "val"), ("ft", "test")):
        assert groups(w, early) == groups(w, late)
        for i in groups(w, early):
            n_windows = (len(recordings.signals[i]) - har.WINDOW) // har.STEP + 1
            n_early = int((getattr(w, early).group == i).sum())
            n_late = int((getattr(w, late).group == i).sum())
            assert n_early + n_late == n_windows - 1
            assert min(n_early, n_late) >= 1


def test_har_recording_split_puts_every_recording_in_one_split():
    w = har_workload(split_by="recording")
    seen = [groups(w, name) for name in SPLITS]
    assert sum(len(s) for s in seen) == 140 and len(set().union(*seen)) == 140
    assert [len(s) for s in seen] == [56, 14, 35, 35]


def test_pretrain_and_device_recordings_are_disjoint():
    for w in (har_workload(), har_workload(split_by="recording")):
        assert not (groups(w, "train") | groups(w, "val")) & (groups(w, "ft") | groups(w, "test"))


def test_har_is_deterministic_and_seeded():
    assert_same(har_workload(), har.load(har.HarConfig()))
    other = har_workload(seed=1)
    np.testing.assert_array_equal(other.train.x, har_workload().train.x)  # time split: seed moves only the drift
    assert not np.array_equal(other.ft.x, har_workload().ft.x)


def test_har_drift_shifts_only_the_device_data():
    drifted, clean = har_workload(), har_workload(drift=False)
    for name in ("train", "val"):
        np.testing.assert_array_equal(getattr(drifted, name).x, getattr(clean, name).x)
    for name in ("ft", "test"):
        assert np.abs(getattr(drifted, name).x - getattr(clean, name).x).mean() > 0.05
    assert len(drifted.config["drift_gain"]) == 6 and "drift_gain" not in clean.config


def test_har_config_is_validated():
    with pytest.raises(ValueError, match="val_fraction"):
        har.HarConfig(val_fraction=1.0)
    with pytest.raises(ValueError):
        har.HarConfig(split_by="subject")  # type: ignore[arg-type]


# --- digits ------------------------------------------------------------------------------


def test_digits_splits_are_disjoint_and_cover_the_set():
    w = digits_workload()
    assert w.sizes() == {"train": 862, "val": 216, "ft": 359, "test": 360}
    seen = [groups(w, name) for name in SPLITS]
    assert len(set().union(*seen)) == sum(len(s) for s in seen) == 1797
    for name in SPLITS:
        split = getattr(w, name)
        assert split.x.shape[1] == 64 and split.x.min() >= 0.0 and split.x.max() <= 1.0
        assert set(split.y.tolist()) == set(range(10))


def test_digits_device_images_are_rotated_and_pretrain_images_are_not():
    w, upright = digits_workload(), digits_workload(min_angle=0.0, max_angle=0.0)
    np.testing.assert_array_equal(w.train.x, upright.train.x)
    np.testing.assert_allclose(upright.ft.x, upright.ft.x.round(4))  # /16 of integer pixels: no resampling
    changed = np.abs(w.ft.x - upright.ft.x).sum(axis=1) > 0.5
    assert changed.mean() > 0.95
    angles = digits.draw_angles(1000, digits.DigitsConfig())
    assert np.all((np.abs(angles) >= 15.0) & (np.abs(angles) <= 30.0))
    assert (angles > 0).mean() == pytest.approx(0.5, abs=0.1)


def test_digits_is_deterministic_and_seeded():
    assert_same(digits_workload(), digits.load(digits.DigitsConfig()))
    assert not np.array_equal(digits_workload(seed=1).test.group, digits_workload().test.group)


# --- npz ---------------------------------------------------------------------------------


def test_save_npz_round_trips_without_pickle_and_is_byte_stable(tmp_path: Path):
    split = Split(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([0, 1, 1]), np.arange(3))
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    save_npz(a, split, ("left", "right"))
    save_npz(b, split, ("left", "right"))
    assert a.read_bytes() == b.read_bytes()
    with np.load(a, allow_pickle=False) as data:
        assert sorted(data.files) == ["labels", "x", "y"]
        np.testing.assert_array_equal(data["x"], split.x)
        assert data["y"].dtype == np.int64 and data["labels"].dtype.kind == "U"
        assert data["labels"].tolist() == ["left", "right"]


def test_save_npz_writes_the_sources_beside_x_and_y(tmp_path: Path):
    sources = {"subject": np.array([6, 6, 7]), "recording": np.array([70, 71, 80])}
    split = Split(np.zeros((3, 2), np.float32), np.array([0, 1, 1]), np.arange(3), sources)
    save_npz(tmp_path / "a.npz", split, ("left", "right"))
    with np.load(tmp_path / "a.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["labels", "recording", "subject", "x", "y"]
        np.testing.assert_array_equal(data["subject"], sources["subject"])
        np.testing.assert_array_equal(data["recording"], sources["recording"])


@pytest.mark.parametrize(
    "name, ids", [("subject", np.zeros(2, np.int64)), ("subject", np.zeros(3, np.int32)), ("y", np.zeros(3, np.int64))]
)
def test_split_rejects_a_bad_source(name, ids):
    with pytest.raises(ValueError, match=f"sources\\['{name}'\\]"):
        Split(np.zeros((3, 2), np.float32), np.zeros(3, np.int64), np.zeros(3, np.int64), {name: ids})


def test_split_rejects_wrong_dtypes():
    with pytest.raises(ValueError, match="float32"):
        Split(np.zeros((2, 2)), np.zeros(2, np.int64), np.zeros(2, np.int64))
