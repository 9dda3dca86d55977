"""`from s2conv import convert`: options as fields, the bundle written with `output`, progress on request."""

from __future__ import annotations

import io

import pytest
from conv_graphs import gemm_chain
from s2conv import ConvertOptions, convert
from s2conv.convert import InvalidOptionError
from s2conv.stages import StageProgress
from s2rt.bundle import read_bundle


def test_convert_takes_option_fields_and_writes_the_bundle(tmp_path):
    model = gemm_chain().save(tmp_path)
    bundle = convert(model, output=tmp_path / "out" / "b.s2l", rank=2, labels=["a", "b", "c"])
    on_disk = read_bundle(tmp_path / "out" / "b.s2l")
    assert on_disk.digest == bundle.digest and len(bundle.digest) == 64
    assert on_disk.head.rank == 2 and on_disk.labels == ("a", "b", "c")
    assert convert(model, ConvertOptions(rank=2, labels=("a", "b", "c"))).head.rank == 2


def test_convert_refuses_options_and_fields_together_and_bad_fields(tmp_path):
    model = gemm_chain().save(tmp_path)
    with pytest.raises(TypeError, match="not both"):
        convert(model, ConvertOptions(), rank=2)
    with pytest.raises(InvalidOptionError, match="option rank: expected an integer in"):
        convert(model, rank=0)


def test_stage_progress_on_a_terminal_draws_each_stage_on_one_line():
    stream = io.StringIO()
    progress = StageProgress(stream, tty=True)
    with progress.stage("quantizing"):
        assert stream.getvalue() == "s2conv: quantizing ..."
    assert stream.getvalue().startswith("s2conv: quantizing ... done (") and stream.getvalue().endswith(" s)\n")
    with pytest.raises(ValueError), progress.stage("emitting"):
        raise ValueError
    assert stream.getvalue().endswith("s2conv: emitting ...\n")  # the error's line starts on a line of its own


def test_stage_progress_in_a_log_is_one_line_per_finished_stage():
    stream = io.StringIO()
    with StageProgress(stream, tty=False).stage("quantizing"):
        assert stream.getvalue() == ""
    assert stream.getvalue().startswith("s2conv: quantizing: done in ") and stream.getvalue().count("\n") == 1
