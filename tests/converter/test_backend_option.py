"""`s2conv --backend onnx|tflite|both`: which frozen segments the bundle carries, and the
errors around it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.parity import assert_close, run_onnx, run_tflite
from s2conv import ConvertOptions, convert
from s2conv.cli import main
from s2conv.convert import InvalidOptionError
from s2rt.bundle import SegmentBackend, read_bundle

MODELS = Path(__file__).resolve().parents[2] / "models"
HAR = MODELS / "har_mlp.onnx"


@pytest.mark.parametrize(
    ("backend", "kinds"),
    [("onnx", [SegmentBackend.ONNX]), ("tflite", [SegmentBackend.TFLITE]), ("both", [SegmentBackend.ONNX, SegmentBackend.TFLITE])],
)
def test_segments_per_backend(backend, kinds):
    bundle = convert(HAR, ConvertOptions(backend=backend))
    assert [s.backend for s in bundle.segments] == kinds
    assert all(s.input_name == "x" and s.logits_output == "s2l.logits" for s in bundle.segments)


def test_default_is_onnx_and_recorded_in_provenance():
    assert ConvertOptions().backend == "onnx"
    assert json.loads(convert(HAR, ConvertOptions(backend="both")).provenance.options_json)["backend"] == "both"


def test_invalid_backend():
    with pytest.raises(InvalidOptionError, match="option backend: expected one of onnx, tflite, both, got 'tf'"):
        ConvertOptions(backend="tf")


def test_cli_rejects_an_unknown_backend(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(HAR), "-o", str(tmp_path / "b.s2l"), "--backend", "coreml"])
    assert e.value.code == 2 and "invalid choice: 'coreml'" in capsys.readouterr().err


def test_save_segment_in_either_format(tmp_path, capsys):
    bundle_path = tmp_path / "b.s2l"
    args = [str(HAR), "-o", str(bundle_path), "--backend", "both"]
    assert main([*args, "--save-segment", str(tmp_path / "seg.tflite")]) == 0
    assert "wrote tflite segment" in capsys.readouterr().out
    assert main([*args, "--save-segment", str(tmp_path / "seg.onnx")]) == 0
    x = np.random.default_rng(0).normal(size=(5, 48)).astype(np.float32)
    assert_close(run_tflite((tmp_path / "seg.tflite").read_bytes(), x), run_onnx((tmp_path / "seg.onnx").read_bytes(), x))
    assert (tmp_path / "seg.tflite").read_bytes() == bytes(read_bundle(bundle_path).segment(SegmentBackend.TFLITE).model)


def test_save_segment_the_bundle_does_not_have(tmp_path, capsys):
    code = main([str(HAR), "-o", str(tmp_path / "b.s2l"), "--backend", "tflite", "--save-segment", str(tmp_path / "seg.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1  # a usage error, found before the conversion
    assert "has no ONNX segment to save (it has TFLITE)" in err[0]
