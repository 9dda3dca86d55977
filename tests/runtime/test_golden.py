"""Schema evolution: versioned golden bundles in tests/golden, written from the tiny bundle.

`v<major>.<minor>-<name>.s2l` was written by the writer of that format version. Every
readable version must keep loading, running and training; a newer major must be refused
clearly. Since 1.2 a `-generated-a` golden holds the head's A as its rule (regenerated from
the seed, `s2rt.lora_init`), the others store it.
Files of older versions are never rewritten. When the format changes (s2l.fbs: bump
FORMAT_MINOR or FORMAT_MAJOR), add the new version's goldens with

    S2L_REGEN_GOLDEN=1 pytest tests/runtime/test_golden.py      (or: make golden)
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import pytest
from helpers.keys import test_key
from helpers.tiny import tiny_bundle, tiny_reference, tiny_weights
from s2rt.bundle import FORMAT_MAJOR, FORMAT_MINOR, AInitRule, Bundle, parse_bundle, serialize_bundle
from s2rt.bundle.fb.BundleFile import BundleFile
from s2rt.data import Samples
from s2rt.errors import BundleError
from s2rt.lora_init import lora_a
from s2rt.session import Model
from s2rt.trainer import TrainConfig
from s2rt.trust import open_trusted

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
REGEN = os.environ.get("S2L_REGEN_GOLDEN") == "1"
CURRENT = f"v{FORMAT_MAJOR}.{FORMAT_MINOR}"
NAME = re.compile(r"^v(\d+)\.(\d+)-[\w-]+\.s2l$")
MAX_GOLDEN_BYTES = 16 * 1024


GENERATED_A_SINCE = (1, 2)


def generated_a_tiny() -> Bundle:
    """The tiny bundle with the head's A drawn from its seed: written as the rule, no arrays."""
    b = tiny_bundle()
    a_init = tuple(lora_a(b.head.rank, t.size, b.head.seed, i) for i, t in enumerate(b.taps))
    return dataclasses.replace(b, head=dataclasses.replace(b.head, a_init=a_init))


def expected_contents(path: Path) -> Bundle:
    return generated_a_tiny() if "generated-a" in path.name else tiny_bundle()


def current_goldens() -> dict[str, bytes]:
    return {
        f"{CURRENT}-tiny.s2l": serialize_bundle(tiny_bundle())[0],
        f"{CURRENT}-tiny-signed.s2l": serialize_bundle(tiny_bundle(), test_key(1))[0],
        f"{CURRENT}-tiny-generated-a.s2l": serialize_bundle(generated_a_tiny())[0],
    }


def frozen_goldens() -> dict[str, bytes]:
    """Files of other versions, made once from the current writer with its version patched."""
    import s2rt.bundle.writer as writer

    made = {}
    for name, (major, minor) in {"v1.0-tiny.s2l": (1, 0), f"v{FORMAT_MAJOR + 1}.0-future.s2l": (FORMAT_MAJOR + 1, 0)}.items():
        saved = writer.FORMAT_MAJOR, writer.FORMAT_MINOR
        writer.FORMAT_MAJOR, writer.FORMAT_MINOR = major, minor
        try:
            made[name] = writer.serialize_bundle(tiny_bundle())[0]
        finally:
            writer.FORMAT_MAJOR, writer.FORMAT_MINOR = saved
    return made


if REGEN:
    GOLDEN.mkdir(exist_ok=True)
    for name, data in current_goldens().items():
        (GOLDEN / name).write_bytes(data)
    for name, data in frozen_goldens().items():
        if not (GOLDEN / name).exists():
            (GOLDEN / name).write_bytes(data)


def goldens() -> list[tuple[Path, tuple[int, int]]]:
    found = []
    for path in sorted(GOLDEN.glob("*.s2l")):
        m = NAME.match(path.name)
        assert m, f"{path.name}: golden files are named v<major>.<minor>-<name>.s2l"
        found.append((path, (int(m[1]), int(m[2]))))
    return found


def readable() -> list[tuple[Path, tuple[int, int]]]:
    return [(p, v) for p, v in goldens() if v[0] <= FORMAT_MAJOR]


def test_the_current_version_has_goldens_and_the_writer_still_writes_them():
    for name in current_goldens():
        path = GOLDEN / name
        assert path.is_file(), f"no golden {name} for format {CURRENT}: run S2L_REGEN_GOLDEN=1 pytest {__file__}"
        data = path.read_bytes()
        bundle = parse_bundle(data, name)
        signer = test_key(1) if bundle.signature else None
        assert serialize_bundle(bundle, signer)[0] == data, (
            f"{name}: reading and writing it again changes its bytes: the writer changed. If the format changed, "
            f"bump FORMAT_MINOR (or FORMAT_MAJOR) and run S2L_REGEN_GOLDEN=1 pytest {__file__}"
        )


def test_goldens_cover_an_older_version_and_a_newer_major_and_stay_small():
    versions = {v for _, v in goldens()}
    assert (1, 0) in versions and any(major > FORMAT_MAJOR for major, _ in versions)
    assert all(p.stat().st_size <= MAX_GOLDEN_BYTES for p, _ in goldens())


def test_goldens_cover_both_a_init_rules_and_only_generated_ones_leave_a_out():
    for path, version in readable():
        head = BundleFile.GetRootAs(path.read_bytes(), 0).BodyNestedRoot().Head()
        generated = "generated-a" in path.name
        assert head.AInitRule() == (AInitRule.SPLITMIX64_UNIFORM if generated else AInitRule.STORED), path.name
        assert head.AInitLength() == (0 if generated else len(tiny_bundle().taps)), path.name
        assert not generated or version >= GENERATED_A_SINCE
    assert any("generated-a" in p.name for p, _ in readable())
    assert any(v < GENERATED_A_SINCE for _, v in readable())  # stored-A files of 1.0 and 1.1 stay


@pytest.mark.parametrize(("path", "version"), readable(), ids=lambda v: v.name if isinstance(v, Path) else None)
def test_every_readable_golden_loads_with_its_contents_and_runs(path, version):
    bundle = parse_bundle(path.read_bytes(), path.name)
    assert bundle.format_version == version
    _same_contents(bundle, expected_contents(path))
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    _, logits = tiny_reference(tiny_weights(), x)
    np.testing.assert_allclose(Model(bundle).logits(x), logits, rtol=1e-5, atol=1e-5)  # B = 0: the frozen logits


@pytest.mark.parametrize(("path", "version"), readable(), ids=lambda v: v.name if isinstance(v, Path) else None)
def test_every_readable_golden_trains_exactly_like_its_bundle_in_memory(path, version):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    data = Samples(x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5))
    config = TrainConfig(epochs=15, batch_size=16, learning_rate=0.05, seed=1)
    from_file, in_memory = Model(parse_bundle(path.read_bytes(), path.name)), Model(expected_contents(path))
    before = from_file.evaluate(data)["accuracy"]
    from_file.fine_tune(data, config)
    in_memory.fine_tune(data, config)
    for (a0, b0), (a1, b1) in zip(from_file.head.per_tap(), in_memory.head.per_tap(), strict=True):
        np.testing.assert_array_equal(a0, a1)
        np.testing.assert_array_equal(b0, b1)
    assert from_file.evaluate(data)["accuracy"] > before + 0.1


def test_the_signed_golden_verifies_against_its_key():
    for path, _ in readable():
        if "signed" in path.name:
            assert open_trusted(path, [test_key(1).public_key]).signer_key_id == test_key(1).key_id


@pytest.mark.parametrize(
    ("path", "version"), [g for g in goldens() if g[1][0] > FORMAT_MAJOR], ids=lambda v: v.name if isinstance(v, Path) else None
)
def test_a_newer_major_version_is_refused_clearly(path, version):
    with pytest.raises(BundleError, match=rf"format version {version[0]}\.{version[1]} is not readable .* upgrade s2rt"):
        parse_bundle(path.read_bytes(), path.name)


def _same_contents(got: Bundle, want: Bundle) -> None:
    assert (got.provenance, got.labels, got.taps, got.cache, got.output_activation) == (
        want.provenance,
        want.labels,
        want.taps,
        want.cache,
        want.output_activation,
    )
    assert (got.input.name, got.input.shape, got.input.dtype) == (want.input.name, want.input.shape, want.input.dtype)
    h, w = got.head, want.head
    assert (h.rank, h.alpha, h.num_outputs, h.loss, h.seed, h.defaults) == (w.rank, w.alpha, w.num_outputs, w.loss, w.seed, w.defaults)
    for a, b in zip(h.a_init, w.a_init, strict=True):
        np.testing.assert_array_equal(a, b)
    assert [(s.backend, s.input_name, s.logits_output) for s in got.segments] == [
        (s.backend, s.input_name, s.logits_output) for s in want.segments
    ]
