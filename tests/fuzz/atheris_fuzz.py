"""Coverage-guided fuzzing of one target with atheris (libFuzzer): for long runs, not in CI.

    .venv/bin/python tests/fuzz/atheris_fuzz.py TARGET [libFuzzer options]
    .venv/bin/python tests/fuzz/atheris_fuzz.py bundle-body -runs=500000 -timeout=1 -rss_limit_mb=1024 -max_len=16384

TARGET is one of tests/helpers/fuzz_targets.py: bundle, bundle-body, bundle-signed-body,
bundle-trusted, npz-samples, csv-samples, adapters. The target's seed files start the
corpus in out/fuzz/TARGET (kept between runs). s2rt is instrumented for coverage; the
bundle reader's catch-all is off, so a gap in the structural verifier is a crash.
libFuzzer reports a crash (any exception but the target's allowed error), a slow input
(-timeout, seconds) or a memory blow-up (-rss_limit_mb), and saves the input to replay:
`.venv/bin/python tests/fuzz/atheris_fuzz.py TARGET crash-<sha1>`.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT / "tests")]

with atheris.instrument_imports(include=["s2rt"]):
    import s2rt.bundle.reader as reader
    from helpers.fuzz_targets import Target, targets


def corpus(target: Target) -> Path:
    folder = ROOT / "out" / "fuzz" / target.name
    folder.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(target.seeds):
        (folder / f"seed-{i}").write_bytes(seed)
    return folder


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets():
        sys.exit(f"usage: {sys.argv[0]} TARGET [libFuzzer options]; TARGET is one of: {', '.join(targets())}")
    target = targets()[sys.argv[1]]
    reader._PARSE_ERRORS = ()

    def test_one_input(data: bytes) -> None:
        with contextlib.suppress(target.allowed):
            target.run(data)

    options = sys.argv[2:]
    replay = any(not o.startswith("-") for o in options)
    atheris.Setup([sys.argv[0], *options, *([] if replay else [str(corpus(target))])], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
