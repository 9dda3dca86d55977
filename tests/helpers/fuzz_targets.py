"""Fuzz targets: every file a device reads, each with valid seed files and the one error it may raise.

A target's `run(data)` reads `data` as that kind of file and either returns or raises
`allowed`; anything else (another exception, a hang, a blow-up) is a bug. Used by the
hypothesis property tests, the random campaign (tests/fuzz/campaign.py, also the CI
memory check) and the atheris harness (tests/fuzz/atheris_fuzz.py).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from helpers.keys import test_key
from helpers.mutate import body_of, npz_bytes, reseal
from helpers.tiny import tiny_bundle
from s2rt.bundle import Bundle, DType, InputSignature, Segment, SegmentBackend, parse_bundle, serialize_bundle
from s2rt.data import load_samples
from s2rt.errors import BundleError, RuntimeInputError, S2LError, StateError
from s2rt.lora_init import lora_a
from s2rt.state import load_adapters, save_adapters
from s2rt.trust import open_trusted

KEY = test_key(1)
SIG = InputSignature("x", (6,))


@dataclass(frozen=True)
class Target:
    name: str
    seeds: tuple[bytes, ...]
    run: Callable[[bytes], object]
    allowed: type[S2LError]


def structure_heavy_bundle() -> Bundle:
    """Mostly structure: a 16-byte stand-in segment, float16 cache, input normalisation, non-ASCII labels."""
    b = tiny_bundle(cache_dtype=DType.FLOAT16)
    signature = InputSignature("x", (6,), DType.FLOAT32, np.arange(6, dtype=np.float32), np.full(6, 2, np.float32))
    segment = Segment(SegmentBackend.ONNX, b"\x08\x07" * 8, "x", "s2l.logits")
    return dataclasses.replace(b, input=signature, segments=(segment,), labels=("a", "β", "ç"))


def generated_a_bundle() -> Bundle:
    """The tiny bundle with the seed's own A, which the writer leaves out (format 1.2's rule)."""
    b = tiny_bundle()
    h = b.head
    a_init = tuple(lora_a(h.rank, tap.size, h.seed, index) for index, tap in enumerate(b.taps))
    return dataclasses.replace(b, head=dataclasses.replace(h, a_init=a_init))


@cache
def scratch() -> Path:
    """A per-process folder for targets that read from a path."""
    return Path(tempfile.mkdtemp(prefix=f"s2l-fuzz-{os.getpid()}-"))


def _from_file(suffix: str, read: Callable[[Path], object]) -> Callable[[bytes], object]:
    def run(data: bytes) -> object:
        path = scratch() / f"input{suffix}"
        path.write_bytes(data)
        return read(path)

    return run


@cache
def adapter_bundle() -> Bundle:
    return parse_bundle(serialize_bundle(tiny_bundle())[0])


def adapter_seed() -> bytes:
    b, rng = adapter_bundle(), np.random.default_rng(0)
    h = b.head
    adapters = [(rng.normal(size=(h.rank, t.size)).astype(np.float32), rng.normal(size=(3, h.rank)).astype(np.float32)) for t in b.taps]
    save_adapters(scratch() / "seed.npz", adapters, b, metrics={"accuracy": 0.5})
    return (scratch() / "seed.npz").read_bytes()


def _samples(path: Path) -> object:
    return load_samples(path, SIG, num_classes=3)


@cache
def targets() -> dict[str, Target]:
    heavy, tiny = serialize_bundle(structure_heavy_bundle())[0], serialize_bundle(tiny_bundle())[0]
    generated = serialize_bundle(generated_a_bundle())[0]
    signed = serialize_bundle(structure_heavy_bundle(), KEY)[0]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 6)).astype(np.float32), rng.integers(0, 3, 12)
    csv_labelled = "a,b,c,d,e,f,label\n" + "".join(",".join(f"{v:.4g}" for v in r) + f",{c}\n" for r, c in zip(x, y))
    csv_plain = "".join(",".join(f"{v:.3f}" for v in r) + "\n" for r in x)
    found = [
        Target("bundle", (heavy, tiny, signed, generated), parse_bundle, BundleError),
        Target("bundle-body", (body_of(heavy), body_of(tiny), body_of(generated)), lambda d: parse_bundle(reseal(d)), BundleError),
        Target("bundle-signed-body", (body_of(signed),), lambda d: open_trusted(reseal(d, KEY), [KEY.public_key]), BundleError),
        Target("bundle-trusted", (signed, heavy), lambda d: open_trusted(d, [KEY.public_key]), BundleError),
        Target(
            "npz-samples",
            (npz_bytes(x=x, y=y), npz_bytes(compressed=True, x=x, y=y), npz_bytes(x=x.astype(np.float16))),
            _from_file(".npz", _samples),
            RuntimeInputError,
        ),
        Target("csv-samples", (csv_labelled.encode(), csv_plain.encode()), _from_file(".csv", _samples), RuntimeInputError),
        Target("adapters", (adapter_seed(),), _from_file(".npz", lambda p: load_adapters(p, adapter_bundle())), StateError),
    ]
    return {t.name: t for t in found}
