"""Fuzzing every file a device reads: only the allowed error, nothing else.

Targets (tests/helpers/fuzz_targets.py): bundles raw, bundle bodies in a fresh envelope
with the digest recomputed (so the mutation reaches the structural verifier and the
parser), bodies re-signed by a trusted key (so it passes the signature check too),
signed bundles through the trust check; npz and CSV sample files; adapter state files.
Mutations (tests/helpers/mutate.py): bit flips, byte writes, truncation, splices and
inserts from another seed, deletions, 4-byte words replaced by huge or sign-flipping
sizes. Accepted files must also make sense (finite samples of the right shape, adapters
exactly as saved).

Bounded for CI: deterministic, `EXAMPLES` per target, each under the 1 s deadline. The
reader's catch-all for accessor errors is switched off here, so a gap in the structural
verifier fails a test instead of being papered over. Memory: test_fuzz_memory.py.
Longer runs: `S2L_FUZZ_EXAMPLES=20000 pytest tests/runtime/test_fuzz.py`, the random
campaign and the atheris harness in tests/fuzz/ (see the README).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import s2rt.bundle.reader as reader
from helpers.fuzz import FUZZ, ops
from helpers.fuzz_targets import SIG, Target, adapter_bundle, adapter_seed, targets
from helpers.mutate import body_of, mutate, reseal
from hypothesis import given
from hypothesis import strategies as st
from s2rt.bundle import parse_bundle
from s2rt.data import Samples
from s2rt.errors import BundleError
from s2rt.state import load_adapters

HUGE = (0xFFFFFFFF, 0x7FFFFFFF, 0x80000000)


@pytest.fixture(scope="module", autouse=True)
def strict_reader() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reader, "_PARSE_ERRORS", ())
        yield


def run_target(target: Target, data: bytes) -> object | None:
    try:
        return target.run(data)
    except target.allowed:
        return None


def check_accepted(name: str, result: object) -> None:
    if isinstance(result, Samples):
        assert result.x.shape[1:] == SIG.shape and result.x.dtype == np.float32 and np.isfinite(result.x).all()
        assert result.y is None or (result.y.shape == (len(result.x),) and ((result.y >= 0) & (result.y < 3)).all())
    if name == "adapters" and result is not None:
        (good, _), (loaded, _) = _good_adapters(), result  # type: ignore[misc]
        for (a0, b0), (a1, b1) in zip(good, loaded, strict=True):
            np.testing.assert_array_equal(a0, a1)
            np.testing.assert_array_equal(b0, b1)


def _good_adapters():  # type: ignore[no-untyped-def]
    from helpers.fuzz_targets import scratch

    (scratch() / "good.npz").write_bytes(adapter_seed())
    return load_adapters(scratch() / "good.npz", adapter_bundle())


@pytest.mark.parametrize("name", list(targets()))
@FUZZ
@given(pick=st.integers(0, 15), donor=st.integers(0, 15), mutation=ops)
def test_mutated_files_give_only_the_allowed_error(name, pick, donor, mutation):
    target = targets()[name]
    seeds = target.seeds
    data = mutate(seeds[pick % len(seeds)], mutation, seeds[donor % len(seeds)])
    check_accepted(name, run_target(target, data))


def test_every_word_of_a_body_set_to_a_huge_size():
    """Exhaustive: each 4-byte-aligned word of the body, one at a time, replaced by a huge value or the body's length."""
    target = targets()["bundle-body"]
    body = target.seeds[0]
    for pos in range(0, len(body) - 3, 4):
        for value in (*HUGE, len(body)):
            run_target(target, mutate(body, [("word", pos, value, 0)], body))


def test_every_truncation_of_a_body():
    """Cutting only the builder's trailing padding leaves a valid body; any other cut is refused."""
    body = body_of(targets()["bundle"].seeds[1])
    accepted = []
    for cut in range(len(body)):
        try:
            parse_bundle(reseal(body[:cut]))
            accepted.append(cut)
        except BundleError:
            pass
    assert all(b == 0 for b in body[min(accepted, default=len(body)) :])
