"""s2models.data.fan: the synthetic fan-vibration workload (spectra, splits, determinism, shift)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from s2models.data import Workload, fan

SPLITS = ("train", "val", "ft", "test")


@functools.cache
def workload(**overrides: object) -> Workload:
    return fan.load(fan.FanConfig(**overrides))  # type: ignore[arg-type]


def test_a_pure_tone_peaks_in_its_spectrum_bin():
    t = np.arange(fan.WINDOW) / fan.FS
    bin_hz = fan.FS / fan.WINDOW
    signal = np.sin(2 * np.pi * 40 * bin_hz * t)[None, :]  # exactly on bin 40
    features = fan.spectrum_features(signal)
    assert features.shape == (1, fan.FEATURES)
    assert int(features[0].argmax()) == 40 - 1  # features start at bin 1


def test_split_sizes_labels_and_units():
    w, config = workload(), fan.FanConfig()
    per_class = {"train": config.pretrain_units, "val": config.pretrain_units, "ft": config.device_units, "test": config.device_units}
    for name in SPLITS:
        split = getattr(w, name)
        assert split.x.shape[1] == fan.FEATURES and np.isfinite(split.x).all()
        counts = np.bincount(split.y, minlength=len(fan.LABELS))
        assert len(set(counts.tolist())) == 1 and counts.sum() == len(split)  # balanced classes
        assert len(np.unique(split.group)) == per_class[name] * len(fan.LABELS)
    assert not set(w.train.group.tolist()) & set(w.ft.group.tolist())  # the device has other units
    assert set(w.train.group.tolist()) == set(w.val.group.tolist())  # cut in time, same units
    assert set(w.ft.group.tolist()) == set(w.test.group.tolist())


def test_same_seed_same_arrays_other_seed_other_arrays():
    a, b, c = workload(), fan.load(), workload(seed=1)
    for name in SPLITS:
        np.testing.assert_array_equal(getattr(a, name).x, getattr(b, name).x)
    assert not np.allclose(a.ft.x, c.ft.x)


def test_the_room_and_the_sensor_shift_the_device_spectra():
    shifted, lab = workload(), workload(sensor_gain=1.0, room_noise=0.0, room_tone_amplitude=0.0)
    np.testing.assert_array_equal(shifted.train.x, lab.train.x)  # pretraining never sees the room
    gap = np.abs(shifted.ft.x.mean(axis=0) - lab.ft.x.mean(axis=0))
    room_bin = round(50.0 / (fan.FS / fan.WINDOW)) - 1
    assert gap[room_bin] > 3 * np.median(gap)  # the room's 50 Hz machinery stands out


@pytest.mark.parametrize("name", ["val_fraction", "test_fraction"])
def test_config_rejects_fractions_outside_0_1(name):
    with pytest.raises(ValueError, match=name):
        fan.FanConfig(**{name: 1.0})
