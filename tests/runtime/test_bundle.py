"""Bundle emit -> parse for every field, and the reader's refusals."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from helpers.tiny import tiny_bundle
from s2rt.bundle import (
    FORMAT_MAJOR,
    FORMAT_MINOR,
    AInitRule,
    DType,
    Loss,
    Optimizer,
    OutputActivation,
    TapReduction,
    TrainDefaults,
    parse_bundle,
    read_bundle,
    serialize_bundle,
    write_bundle,
)
from s2rt.bundle.a_init import a_init_rule
from s2rt.bundle.model import FILE_IDENTIFIER, InputSignature
from s2rt.errors import BundleError
from s2rt.lora_init import lora_a


def rich_bundle():
    b = tiny_bundle(cache_dtype=DType.FLOAT16)
    taps = (b.taps[0], dataclasses.replace(b.taps[1], reduction=TapReduction.GLOBAL_AVG_POOL))
    head = dataclasses.replace(
        b.head,
        loss=Loss.MSE,
        seed=1234,
        defaults=TrainDefaults(Optimizer.SGD, 0.125, 7, 9),
    )
    signature = InputSignature("x", (6,), DType.FLOAT32, np.arange(6, dtype=np.float32), np.full(6, 2, np.float32))
    return dataclasses.replace(
        b, taps=taps, head=head, input=signature, output_activation=OutputActivation.LOG_SOFTMAX, labels=("a", "b", "ç")
    )


def test_every_field_round_trips():
    b = rich_bundle()
    data, digest = serialize_bundle(b)
    r = parse_bundle(data)
    assert r.digest == digest == hashlib.sha256(_body(data)).hexdigest()
    assert r.format_version == (FORMAT_MAJOR, FORMAT_MINOR)
    assert r.provenance == b.provenance
    assert r.labels == b.labels
    assert r.taps == b.taps
    assert r.cache == b.cache
    assert r.output_activation == OutputActivation.LOG_SOFTMAX
    assert (r.input.name, r.input.shape, r.input.dtype) == (b.input.name, b.input.shape, b.input.dtype)
    np.testing.assert_array_equal(r.input.mean, b.input.mean)
    np.testing.assert_array_equal(r.input.std, b.input.std)
    assert len(r.segments) == 1
    s, t = r.segments[0], b.segments[0]
    assert (s.backend, bytes(s.model), s.input_name, s.logits_output) == (t.backend, t.model, t.input_name, t.logits_output)
    h = r.head
    assert (h.rank, h.alpha, h.num_outputs, h.loss, h.seed, h.defaults) == (
        b.head.rank, b.head.alpha, b.head.num_outputs, Loss.MSE, 1234, TrainDefaults(Optimizer.SGD, 0.125, 7, 9)
    )
    for got, want in zip(h.a_init, b.head.a_init):
        np.testing.assert_array_equal(got, want)


def _body(data: bytes) -> bytes:
    from s2rt.bundle.fb.BundleFile import BundleFile

    return BundleFile.GetRootAs(data, 0).BodyAsNumpy().tobytes()


def test_arrays_are_aligned_zero_copy_views(tmp_path):
    path = tmp_path / "b.s2l"
    write_bundle(rich_bundle(), path)
    r = read_bundle(path)
    for a in (*r.head.a_init, r.input.mean):
        assert a.ctypes.data % 16 == 0
        assert not a.flags.writeable and not a.flags.owndata


def test_write_returns_the_digest_the_reader_sees(tmp_path):
    written = write_bundle(tiny_bundle(), tmp_path / "b.s2l")
    assert written.digest == read_bundle(tmp_path / "b.s2l").digest
    assert len(written.digest) == 64


@pytest.mark.parametrize("cut", [0, 3, 8, 16, 100, -1])
def test_truncated_file_is_refused(cut):
    data, _ = serialize_bundle(tiny_bundle())
    with pytest.raises(BundleError):
        parse_bundle(data[:cut] if cut >= 0 else data[:-1])


def test_every_single_bit_flip_in_the_body_is_caught():
    data, _ = serialize_bundle(tiny_bundle())
    rng = np.random.default_rng(0)
    for pos in rng.choice(np.arange(64, len(data) - 64), size=200, replace=False):
        corrupt = bytearray(data)
        corrupt[pos] ^= 1 << int(rng.integers(8))
        with pytest.raises(BundleError):
            parse_bundle(bytes(corrupt))


def test_digest_mismatch_is_named():
    data = bytearray(serialize_bundle(tiny_bundle())[0])
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(BundleError, match="digest mismatch"):
        parse_bundle(bytes(data))


def test_wrong_identifier_is_named():
    data = bytearray(serialize_bundle(tiny_bundle())[0])
    data[4:8] = b"ONNX"
    with pytest.raises(BundleError, match="not an s2l bundle"):
        parse_bundle(bytes(data))


def test_future_major_version_is_refused(monkeypatch):
    import s2rt.bundle.writer as writer

    monkeypatch.setattr(writer, "FORMAT_MAJOR", FORMAT_MAJOR + 1)
    data, _ = writer.serialize_bundle(tiny_bundle())
    with pytest.raises(BundleError, match=rf"format version {FORMAT_MAJOR + 1}\.{FORMAT_MINOR} is not readable"):
        parse_bundle(data)


def test_inconsistent_contents_are_refused():
    b = tiny_bundle()
    wrong_a = dataclasses.replace(b.head, a_init=(b.head.a_init[0], b.head.a_init[0]))
    with pytest.raises(BundleError, match=r"head.a_init\[1\]"):
        parse_bundle(serialize_bundle(dataclasses.replace(b, head=wrong_a))[0])
    with pytest.raises(BundleError, match="labels"):
        parse_bundle(serialize_bundle(dataclasses.replace(b, labels=("only one",)))[0])


def test_missing_and_non_bundle_files(tmp_path):
    with pytest.raises(BundleError, match="no such bundle file"):
        read_bundle(tmp_path / "nope.s2l")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07" * 40)
    with pytest.raises(BundleError, match="not an s2l bundle"):
        read_bundle(tmp_path / "model.onnx")
    assert FILE_IDENTIFIER == b"S2LB"


# -- the head's initial A: stored, or regenerated from the seed (format 1.2) ----------


def generated_a_bundle(seed=7, rank=3):
    b = tiny_bundle(rank=rank)
    a_init = tuple(lora_a(rank, t.size, seed, i) for i, t in enumerate(b.taps))
    return dataclasses.replace(b, head=dataclasses.replace(b.head, seed=seed, a_init=a_init))


def raw_head(data: bytes):
    from s2rt.bundle.fb.BundleFile import BundleFile

    return BundleFile.GetRootAs(data, 0).BodyNestedRoot().Head()


@pytest.mark.parametrize("seed", [0, 7, 2**63 - 1])
def test_a_drawn_from_the_seed_is_written_as_its_rule_and_read_back_bit_for_bit(seed):
    b = generated_a_bundle(seed)
    assert a_init_rule(b.head, b.taps) == AInitRule.SPLITMIX64_UNIFORM
    data, _ = serialize_bundle(b)
    head = raw_head(data)
    assert (head.AInitRule(), head.AInitLength(), head.Seed()) == (AInitRule.SPLITMIX64_UNIFORM, 0, seed)
    r = parse_bundle(data)
    assert r.head.seed == seed and len(r.head.a_init) == len(b.taps)
    for got, want in zip(r.head.a_init, b.head.a_init, strict=True):
        assert got.dtype == np.float32 and got.flags.c_contiguous and not got.flags.writeable
        assert got.tobytes() == want.tobytes()
    assert serialize_bundle(r)[0] == data


def test_a_generated_head_leaves_exactly_the_a_arrays_out():
    generated = generated_a_bundle()
    stored = dataclasses.replace(generated, head=dataclasses.replace(generated.head, a_init=_nudged(generated.head.a_init)))
    a_bytes = sum(a.nbytes for a in generated.head.a_init)
    saved = len(serialize_bundle(stored)[0]) - len(serialize_bundle(generated)[0])
    assert a_bytes <= saved <= a_bytes + 96 * len(generated.taps)  # plus each Tensor's table, shape and padding


def _nudged(a_init):
    """The same A but for one element one float32 step up: no longer what the seed draws."""
    first = a_init[0].copy()
    first[0, 0] = np.nextafter(first[0, 0], np.float32(1))
    return (first, *a_init[1:])


def test_a_custom_a_is_stored_and_round_trips_exactly():
    custom = tiny_bundle(seed=7)  # its A comes from another generator
    nudged = generated_a_bundle()
    nudged = dataclasses.replace(nudged, head=dataclasses.replace(nudged.head, a_init=_nudged(nudged.head.a_init)))
    for b in (custom, nudged):
        assert a_init_rule(b.head, b.taps) == AInitRule.STORED
        data, _ = serialize_bundle(b)
        assert (raw_head(data).AInitRule(), raw_head(data).AInitLength()) == (AInitRule.STORED, len(b.taps))
        for got, want in zip(parse_bundle(data).head.a_init, b.head.a_init, strict=True):
            assert got.tobytes() == want.tobytes()


def test_a_seed_outside_the_rule_keeps_a_stored():
    b = generated_a_bundle(seed=3)
    negative = dataclasses.replace(b, head=dataclasses.replace(b.head, seed=-1))
    assert a_init_rule(negative.head, negative.taps) == AInitRule.STORED
    r = parse_bundle(serialize_bundle(negative)[0])
    assert r.head.seed == -1 and r.head.a_init[1].tobytes() == b.head.a_init[1].tobytes()


def test_an_unknown_a_init_rule_is_refused_by_name(monkeypatch):
    import s2rt.bundle.writer as writer

    monkeypatch.setattr(writer, "a_init_rule", lambda head, taps: 9)
    with pytest.raises(BundleError, match=r"head\.a_init_rule: unknown value 9 \(known: STORED=0, SPLITMIX64_UNIFORM=1\)"):
        parse_bundle(writer.serialize_bundle(generated_a_bundle())[0])


def test_a_generated_rule_beside_stored_arrays_is_refused(monkeypatch):
    import s2rt.bundle.writer as writer
    from s2rt.bundle.fb import Head as fb_head

    monkeypatch.setattr(writer, "a_init_rule", lambda head, taps: AInitRule.STORED)
    monkeypatch.setattr(fb_head, "AddAInitRule", lambda b, rule: fb_head.HeadAddAInitRule(b, int(AInitRule.SPLITMIX64_UNIFORM)))
    with pytest.raises(BundleError, match=r"head\.a_init holds 2 matrices, expected none: head\.a_init_rule SPLITMIX64_UNIFORM"):
        parse_bundle(writer.serialize_bundle(generated_a_bundle())[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": -5}, r"head\.seed is -5, expected 0\.\.2\^63-1"),
        ({"rank": 5000}, r"needs rank 1\.\.4096"),
        ({"tap_size": 1 << 23}, r"would generate 3 x 8388613 numbers, more than this runtime's limit of 16,777,216"),
    ],
)
def test_a_generated_rule_is_bounded_before_anything_is_drawn(monkeypatch, change, message):
    import s2rt.bundle.writer as writer

    b = generated_a_bundle()
    if "tap_size" in change:
        b = dataclasses.replace(b, taps=(dataclasses.replace(b.taps[0], shape=(change["tap_size"],)), b.taps[1]))
    else:
        b = dataclasses.replace(b, head=dataclasses.replace(b.head, **change))
    monkeypatch.setattr(writer, "a_init_rule", lambda head, taps: AInitRule.SPLITMIX64_UNIFORM)
    with pytest.raises(BundleError, match=message):
        parse_bundle(writer.serialize_bundle(b)[0])
