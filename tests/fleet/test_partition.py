"""Splitting the fine-tune samples over simulated devices by who recorded them (s2fleet.partition),
on HAR's committed fine-tune file (subjects 6-10, 70 recordings), and the simulator's refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from s2conv import ConvertOptions, convert
from s2fleet.partition import partition
from s2fleet.simulate import load_data, main
from s2rt.bundle import write_bundle
from s2rt.session import Model

MODELS = Path(__file__).resolve().parents[2] / "models"
FT, TEST = MODELS / "data" / "har_ft.npz", MODELS / "data" / "har_test.npz"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("bundle") / "har_r8.s2l"
    write_bundle(convert(MODELS / "har_mlp.onnx", ConvertOptions(rank=8)), path)
    return str(path)


@pytest.fixture(scope="module")
def har(bundle):
    return load_data(FT, TEST, Model.open(bundle))


def test_the_fine_tune_file_names_five_subjects_and_seventy_recordings(har):
    assert sorted(har.sources) == ["recording", "subject"]
    assert np.unique(har.sources["subject"]).tolist() == [6, 7, 8, 9, 10]
    assert len(np.unique(har.sources["recording"])) == 70
    for r in np.unique(har.sources["recording"]):  # a recording is one subject doing one exercise
        rows = har.sources["recording"] == r
        assert len(np.unique(har.sources["subject"][rows])) == 1 and len(np.unique(har.y[rows])) == 1


@pytest.mark.parametrize("name, devices", [("subject", 5), ("subject", 15), ("recording", 70), ("recording", 140)])
def test_every_sample_goes_to_one_device_and_a_device_holds_one_source(har, name, devices):
    parts = partition(name, har.y, devices, seed=1, sources=har.sources)
    assert len(parts) == devices and min(len(p) for p in parts) >= 1
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(har.y)))
    ids = har.sources[name]
    assert all(len(np.unique(ids[p])) == 1 for p in parts)
    per_source = devices // len(np.unique(ids))
    owners = [ids[p][0] for p in parts]
    assert all(owners.count(o) == per_source for o in set(owners))


def test_one_device_per_subject_holds_all_that_subjects_samples(har):
    parts = partition("subject", har.y, 5, sources=har.sources)
    for part, subject in zip(parts, [6, 7, 8, 9, 10]):
        np.testing.assert_array_equal(part, np.flatnonzero(har.sources["subject"] == subject))


def test_a_subject_over_several_devices_is_seeded(har):
    a, b = (partition("subject", har.y, 10, seed=s, sources=har.sources) for s in (0, 0))
    c = partition("subject", har.y, 10, seed=1, sources=har.sources)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


@pytest.mark.parametrize(
    "name, devices, sources, match",
    [
        ("subject", 7, None, "no 'subject' array"),
        ("subject", 7, {"recording": np.zeros(8, np.int64)}, r"only \['recording'\]"),
        ("subject", 3, {"subject": np.array([1, 1, 2, 2, 3, 3, 4, 4])}, r"multiple of the 4 subjects \(4, 8, 12"),
        ("recording", 6, {"recording": np.array([1, 1, 1, 1, 1, 2, 2, 3])}, "smallest recording has 1 samples"),
        ("subject", 2, {"subject": np.zeros(7, np.int64)}, "one integer per sample"),
        ("subject", 2, {"subject": np.zeros(8, np.float32)}, "one integer per sample"),
    ],
)
def test_a_source_partition_that_does_not_fit_is_refused(name, devices, sources, match):
    with pytest.raises(ValueError, match=match):
        partition(name, np.zeros(8, np.int64), devices, sources=sources)


def test_the_simulator_refuses_a_file_without_subjects_naming_flag_and_file(bundle, tmp_path, capsys):
    bare = tmp_path / "bare_ft.npz"
    with np.load(FT) as f:
        np.savez(bare, x=f["x"], y=f["y"])
    with pytest.raises(SystemExit) as stop:
        main(["--bundle", bundle, "--data", str(bare), "--test", str(TEST), "--devices", "5", "--partition", "subject"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"{bare}: --partition subject: the data has no 'subject' array" in err


def test_the_simulator_refuses_devices_that_do_not_divide_over_the_subjects(bundle, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--bundle", bundle, "--data", str(FT), "--test", str(TEST), "--devices", "7", "--partition", "subject"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"{FT}: --devices: the subject partition needs a multiple of the 5 subjects" in err
