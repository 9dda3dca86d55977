"""`s2rt` as a newcomer runs it, in a subprocess: usage errors name the flag and exit 2,
outputs are checked before training, a closed pipe ends quietly, a model given for a
bundle is named, `verify` checks unsigned bundles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.tiny import tiny_bundle
from s2rt.bundle import write_bundle
from s2rt.clikit import EXIT_BROKEN_PIPE

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}


def s2rt(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "s2rt", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> None:
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("s2rt: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("s2rt_cli")
    write_bundle(tiny_bundle(), folder / "tiny.s2l")
    rng = np.random.default_rng(0)
    np.savez(folder / "d.npz", x=rng.normal(size=(40, 6)).astype(np.float32), y=rng.integers(0, 3, 40))
    (folder / "a_file").write_text("not a folder")
    return folder


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--epochs", "0", "--epochs: expected an integer >= 1, got 0"),
        ("--epochs", "x", "--epochs: expected an integer >= 1, got 'x'"),
        ("--batch-size", "0", "--batch-size: expected an integer >= 1, got 0"),
        ("--lr", "-1", "--lr: expected a finite number > 0, got -1"),
        ("--lr", "nan", "--lr: expected a finite number > 0, got nan"),
        ("--val-fraction", "2", "--val-fraction: expected a number in [0, 1), got 2"),
        ("--patience", "-1", "--patience: expected an integer >= 0, got -1"),
        ("--seed", "-1", "--seed: expected an integer >= 0, got -1"),
        ("--threads", "0", "--threads: expected an integer >= 1, got 0"),
        ("--cache-capacity", "0", "--cache-capacity: expected an integer >= 1, got 0"),
        ("--max-cache-mb", "0", "--max-cache-mb: expected a finite number > 0, got 0"),
    ],
)
def test_a_bad_flag_value_names_the_flag_and_exits_2(files, flag, value, message):
    result = s2rt("train", files / "tiny.s2l", "--data", files / "d.npz", "-o", files / "out.npz", flag, value)
    assert_one_line_error(result, 2, message)
    assert "TrainConfig" not in result.stderr and not (files / "out.npz").exists()


def test_patience_without_a_validation_split_is_a_usage_error(files):
    result = s2rt("train", files / "tiny.s2l", "--data", files / "d.npz", "-o", files / "out.npz", "--patience", "3")
    assert_one_line_error(result, 2, "--patience 3 needs a validation split: give --val-fraction")


def test_argparse_errors_are_one_line_too(files):
    assert_one_line_error(s2rt("predict", files / "tiny.s2l"), 2, "--data", "see `s2rt predict --help`")
    assert_one_line_error(s2rt("eval"), 2, "bundle")


@pytest.mark.parametrize(
    ("flag", "path", "message"),
    [
        ("-o", "a_file/adapters.npz", "-o/--output {}/a_file/adapters.npz: cannot write there: {}/a_file is not a folder"),
        ("-o", ".", "-o/--output {}: is a directory"),
        ("--cache-file", "a_file/c.s2c", "--cache-file {}/a_file/c.s2c: cannot write there"),
    ],
)
def test_an_unwritable_output_fails_in_one_line_before_training(files, flag, path, message):
    args = ["train", files / "tiny.s2l", "--data", files / "d.npz", "--epochs", "1"]
    args += ["-o", files / path] if flag == "-o" else ["-o", files / "out.npz", flag, files / path]
    result = s2rt(*args)
    assert_one_line_error(result, 2, message.format(*[files] * message.count("{}")))
    assert result.stdout == "" and "epoch" not in result.stderr


def test_predict_into_a_closed_pipe_exits_quietly(files, tmp_path):
    np.savez(tmp_path / "many.npz", x=np.random.default_rng(1).normal(size=(20_000, 6)).astype(np.float32))
    command = [sys.executable, "-m", "s2rt", "predict", str(files / "tiny.s2l"), "--data", str(tmp_path / "many.npz")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # as `| head -1`: read one line, then go away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == EXIT_BROKEN_PIPE
    assert first.startswith(b"0\t") and err == ""  # 20,000 lines outgrow any pipe buffer: the write did fail


@pytest.mark.parametrize("command", ["eval", "predict", "train", "verify"])
def test_an_onnx_model_given_as_the_bundle_says_to_convert_it(files, tmp_path, command):
    model = tmp_path / "model.onnx"
    model.write_bytes(bytes(tiny_bundle().segments[0].model))
    args = [command, model] if command == "verify" else [command, model, "--data", files / "d.npz"]
    if command == "train":
        args += ["-o", tmp_path / "a.npz"]
    assert_one_line_error(
        s2rt(*args), 1, f"{model} is an ONNX model, not an s2l bundle: convert it first with `s2conv {model} -o {tmp_path / 'model.s2l'}`"
    )


def test_a_tflite_file_given_as_the_bundle_is_named(files, tmp_path):
    fake = tmp_path / "model.bin"
    fake.write_bytes(b"\x1c\0\0\0TFL3" + bytes(64))
    assert_one_line_error(s2rt("eval", fake, "--data", files / "d.npz"), 1, "is a TFLite model, not an s2l bundle")


def test_verify_checks_the_digest_of_an_unsigned_bundle(files, tmp_path):
    ok = s2rt("verify", files / "tiny.s2l")
    assert ok.returncode == 0 and ok.stderr == ""
    assert ok.stdout.strip().endswith("digest ok, not signed")
    data = bytearray((files / "tiny.s2l").read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the body: the digest no longer matches
    (tmp_path / "bad.s2l").write_bytes(bytes(data))
    assert_one_line_error(s2rt("verify", tmp_path / "bad.s2l"), 1, "bad.s2l", "digest mismatch")


def test_verify_json_for_an_unsigned_bundle(files):
    result = json.loads(s2rt("verify", files / "tiny.s2l", "--json").stdout)
    assert result["digest_ok"] and not result["signed"] and result["signer_key_id"] is None


def test_help_lists_every_command():
    out = s2rt("--help")
    assert out.returncode == 0
    for command in ("train", "eval", "predict", "verify", "serve", "client"):
        assert f"    {command}" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "--port: expected a TCP port in [0, 65535], got 99999"),
        (["--threads", "0"], "--threads: expected an integer >= 1, got 0"),
        (["--max-connections", "0"], "--max-connections: expected an integer >= 1, got 0"),
        (["--state-dir", "{d}/a_file"], "--state-dir {d}/a_file: is a file; expected a folder"),
        (["--state-dir", "{d}/a_file/state"], "--state-dir {d}/a_file/state: cannot write there: {d}/a_file is not a folder"),
    ],
)
def test_serve_refuses_bad_flags_before_starting(files, args, message):
    full = ["serve", files / "tiny.s2l", "--state-dir", files / "state", *[a.format(d=files) for a in args]]
    assert_one_line_error(s2rt(*full), 2, message.format(d=files))


def test_serve_names_an_onnx_model_given_as_the_bundle(files, tmp_path):
    (tmp_path / "model.onnx").write_bytes(bytes(tiny_bundle().segments[0].model))
    assert_one_line_error(s2rt("serve", tmp_path / "model.onnx", "--state-dir", tmp_path / "s"), 1, "is an ONNX model, not an s2l bundle")
    assert not (tmp_path / "s").exists()


def test_client_refuses_a_negative_timeout_in_one_line():
    assert_one_line_error(s2rt("client", "--timeout", "-1", "ready"), 2, "--timeout: expected a finite number > 0, got -1")


def test_a_folder_given_as_data_is_named_a_folder(files):
    assert_one_line_error(s2rt("eval", files / "tiny.s2l", "--data", files), 1, "is a folder, expected a data file")


def test_a_misspelled_command_gets_a_suggestion_as_in_s2conv():
    assert_one_line_error(s2rt("trian", "b.s2l"), 2, "unknown command 'trian'; did you mean 'train'?")
    assert_one_line_error(s2rt("verfy", "b.s2l"), 2, "unknown command 'verfy'; did you mean 'verify'?")


def test_the_command_list_matches_the_parser():
    from s2rt.cli import COMMAND_NAMES, _parser

    sub = next(a for a in _parser()._actions if a.dest == "command")
    assert tuple(sub.choices) == COMMAND_NAMES
