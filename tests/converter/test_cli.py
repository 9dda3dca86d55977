"""cli: `s2conv` and `s2conv inspect` as a user runs them, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conv_graphs import gemm_chain, residual, with_op_between
from helpers.tiny import tiny_bundle
from s2conv.describe import describe_bundle
from s2rt.bundle import FORMAT_MAJOR, FORMAT_MINOR

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime"), str(ROOT / "converter")])}


def s2conv(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "s2conv.cli", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=60)


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> None:
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("s2conv: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.stdout == ""


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    model = gemm_chain(softmax="Softmax").save(folder)
    (folder / "labels.txt").write_text("cat\ndog\n\nbird\n")
    bundle = folder / "out" / "model.s2l"
    result = s2conv(model, "-o", bundle, "--rank", 2, "--labels-file", folder / "labels.txt", "--cache-dtype", "float16")
    return result, bundle


def test_convert_prints_one_line_per_artefact_and_a_summary(converted):
    result, bundle = converted
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"wrote bundle {bundle} ({bundle.stat().st_size:,} bytes)"
    assert lines[1].startswith("model.onnx: 3 taps (6 + 5 + 4 = 15 features), 3 outputs (then softmax), rank 2")
    assert len(lines) == 2 and result.stderr == ""


def test_inspect_json_shows_what_the_bundle_holds(converted):
    _, bundle = converted
    result = s2conv("inspect", bundle, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["format_version"] == f"{FORMAT_MAJOR}.{FORMAT_MINOR}" and len(info["digest"]) == 64
    assert info["signature"] == {"signed": False, "signer_key_id": None}
    assert info["labels"] == ["cat", "dog", "bird"]
    assert [t["source"] for t in info["taps"]] == ["x", "r0", "r1"]
    assert info["head"]["rank"] == 2 and info["head"]["trainable_parameters"] == 2 * 15 + 3 * 2 * 3
    assert info["segments"][0]["backend"] == "onnx" and info["segments"][0]["size_bytes"] > 0
    assert info["cache"]["fields"][-1] == {"kind": "tap", "name": "s2l.tap.2", "offset": 58, "shape": [4], "dtype": "float16", "nbytes": 8}
    assert info["provenance"]["options"]["cache_dtype"] == "float16"
    assert info["head"]["a_init"] == "splitmix64_uniform"  # the converter's A is the seed's: not stored


def test_inspect_says_when_the_initial_a_is_stored():
    assert describe_bundle(tiny_bundle())["head"]["a_init"] == "stored"  # hand-made A, not the seed's


def test_inspect_text(converted):
    _, bundle = converted
    result = s2conv("inspect", bundle)
    assert result.returncode == 0, result.stderr
    assert "labels      cat, dog, bird" in result.stdout
    assert "s2l.tap.1  r0      fc1    [5]    none" in result.stdout
    assert "initial A regenerated from the seed (splitmix64_uniform)" in result.stdout


def test_errors_are_one_line_with_status_1(tmp_path):
    assert_one_line_error(s2conv(tmp_path / "missing.onnx", "-o", tmp_path / "b.s2l"), 1, "missing.onnx: no such file")
    custom = with_op_between("Foo", "foo", domain="acme").save(tmp_path, "custom.onnx")
    assert_one_line_error(s2conv(custom, "-o", tmp_path / "b.s2l"), 1, "tap 'u0' (input of fc1)", "unknown shape")
    model = residual().save(tmp_path, "res.onnx")
    assert_one_line_error(s2conv(model, "-o", tmp_path / "b.s2l", "--taps", "x,nope"), 1, "no tensor named 'nope'", "candidates")
    (tmp_path / "notes.txt").write_text("neither a bundle nor a model\n")
    assert_one_line_error(s2conv("inspect", tmp_path / "notes.txt"), 1, "notes.txt: not an ONNX model")
    (tmp_path / "bad.s2l").write_bytes(b"\0" * 64)
    assert_one_line_error(s2conv("inspect", tmp_path / "bad.s2l"), 1, "bad.s2l")
    assert not (tmp_path / "b.s2l").exists()


def test_usage_errors_are_one_line_with_status_2(tmp_path):
    model = gemm_chain().save(tmp_path)
    assert_one_line_error(s2conv(model), 2, "-o/--output")
    assert_one_line_error(s2conv(model, "-o", tmp_path / "b.s2l", "--rank", 0), 2, "--rank: expected an integer in [1, 4096], got 0")
    assert_one_line_error(s2conv(model, "-o", tmp_path / "b.s2l", "--cache-dtype", "int4"), 2, "--cache-dtype")


def test_debug_shows_the_traceback(tmp_path):
    result = s2conv(tmp_path / "missing.onnx", "-o", tmp_path / "b.s2l", "--debug")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ConversionError" in result.stderr


def test_help_and_python_dash_m(tmp_path):
    result = subprocess.run([sys.executable, "-m", "s2conv", "--help"], capture_output=True, text=True, env=ENV, timeout=60)
    assert result.returncode == 0
    assert "s2conv inspect BUNDLE.s2l" in result.stdout and "--taps" in result.stdout


def test_named_taps_get_past_a_custom_op_with_a_warning(tmp_path):
    model = with_op_between("Foo", "foo", domain="acme").save(tmp_path)
    result = s2conv(model, "-o", tmp_path / "b.s2l", "--taps", "x,h0")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("s2conv: warning: the frozen segment uses op acme::Foo (node 'foo')")
    assert result.stdout.startswith("wrote bundle")


def test_inspect_a_model_lists_candidate_taps_with_their_costs(tmp_path):
    model = residual().save(tmp_path, "res.onnx")
    result = s2conv("inspect", model, "--json", "--rank", 2)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert [(c["tensor"], c["auto"]) for c in info["candidates"]] == [("x", True), ("res", True)]
    assert [c["adapter_parameters"] for c in info["candidates"]] == [2 * (4 + 2), 2 * (4 + 2)]
    assert info["candidates"][0]["cache_bytes"] == 16 and info["candidates"][0]["next_ops"] == ["Gemm", "Relu", "Add"]
    assert info["auto"]["adapter_parameters"] == {"skip2lora": 2 * 8 + 2 * 2 * 2, "lora-last": 12, "ft-last": 10, "ft-bias": 2}
    text = s2conv("inspect", model)
    assert text.returncode == 0 and "auto taps   2, fused width 8" in text.stdout


def test_help_lists_the_commands():
    result = s2conv("--help")
    assert result.returncode == 0
    for command in ("inspect", "export", "keygen", "sign"):
        assert f"\n  {command} " in result.stdout


@pytest.mark.parametrize(("typed", "meant"), [("inspekt", "inspect"), ("sing", "sign"), ("exprot", "export")])
def test_a_misspelled_command_is_not_taken_for_a_model(tmp_path, typed, meant):
    result = s2conv(typed, tmp_path / "b.s2l")
    assert_one_line_error(result, 2, f"unknown command {typed!r}; did you mean {meant!r}?")


def test_a_missing_model_named_like_a_command_is_reported_missing(tmp_path):
    command = [sys.executable, "-m", "s2conv.cli", "export.onnx", "-o", "b.s2l"]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=60, cwd=tmp_path)
    assert_one_line_error(result, 1, "export.onnx: no such file")


def test_a_file_named_like_a_command_is_still_a_model(tmp_path):
    model = gemm_chain().save(tmp_path, "sing")
    result = subprocess.run(
        [sys.executable, "-m", "s2conv.cli", "sing", "-o", "b.s2l"], capture_output=True, text=True, env=ENV, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert model.exists() and (tmp_path / "b.s2l").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "-1"], "--lr: expected a finite number > 0, got -1.0"),
        (["--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
        (["--tap-pool", "9"], "--tap-pool: expected an integer in [0, 8], got 9"),
        (["--quantize", "int8"], "--quantize int8 needs calibration inputs: give --calib FILE.npz"),
        (["--save-segment", "seg.txt"], "--save-segment seg.txt: name the file .onnx or .tflite"),
    ],
)
def test_option_errors_name_the_flag_not_the_python_field(tmp_path, args, message):
    model = gemm_chain().save(tmp_path)
    command = [sys.executable, "-m", "s2conv.cli", str(model), "-o", "b.s2l", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=60, cwd=tmp_path)
    assert_one_line_error(result, 2, message)
    for field in ("learning_rate", "batch_size", "tap_pool", "option "):
        assert field not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "{d}/a_file/b.s2l"], "-o/--output {d}/a_file/b.s2l: cannot write there: {d}/a_file is not a folder"),
        (["-o", "{d}"], "-o/--output {d}: is a directory"),
        (["-o", "{d}/b.s2l", "--save-segment", "{d}/a_file/s.onnx"], "--save-segment {d}/a_file/s.onnx: cannot write there"),
    ],
)
def test_an_unwritable_output_fails_before_the_conversion(tmp_path, args, message):
    model = gemm_chain().save(tmp_path)
    (tmp_path / "a_file").write_text("")
    result = s2conv(model, *[a.format(d=tmp_path) for a in args])
    assert_one_line_error(result, 2, message.format(d=tmp_path))
    assert not (tmp_path / "b.s2l").exists()


def test_sign_and_export_check_their_output_first(tmp_path, converted):
    _, bundle = converted
    (tmp_path / "a_file").write_text("")
    keygen = s2conv("keygen", "-o", tmp_path / "a_file" / "key")
    assert_one_line_error(keygen, 2, "-o/--output", "is not a folder")
    assert s2conv("keygen", "-o", tmp_path / "key").returncode == 0
    signed = s2conv("sign", bundle, "--key", tmp_path / "key", "-o", tmp_path / "a_file" / "s.s2l")
    assert_one_line_error(signed, 2, "-o/--output", "is not a folder")
    exported = s2conv("export", bundle, "--adapters", tmp_path / "none.npz", "-o", tmp_path / "tuned.txt")
    assert_one_line_error(exported, 2, "name the file .onnx or .tflite")


def test_slow_stages_are_reported_one_line_each_and_quiet_hides_them(tmp_path):
    model = gemm_chain().save(tmp_path)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32))
    args = [model, "-o", tmp_path / "b.s2l", "--quantize", "int8", "--calib", tmp_path / "calib.npz", "--backend", "both"]
    result = s2conv(*args)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("s2conv: quantizing the frozen segment to int8 (32 calibration samples): done in ")
    assert lines[1].startswith("s2conv: emitting the int8 TFLite segment (calibrating it): done in ")
    quiet = s2conv(*args, "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""
