"""The fuzz targets under a capped address space: no mutated file makes a reader allocate without bound.

Runs tests/fuzz/campaign.py in a subprocess (fixed seed, `CASES` per target): the address
space is capped 1 GiB above its start-up size, so an allocation sized by a hostile header
raises MemoryError there (a failure) instead of succeeding lazily, and the resident set
may grow by at most 96 MiB over the whole run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers.fuzz_targets import targets

ROOT = Path(__file__).resolve().parents[2]
CASES = 300


def test_every_target_stays_within_memory_under_mutation():
    argv = [sys.executable, str(ROOT / "tests" / "fuzz" / "campaign.py"), "--cases", str(CASES), "--seed", "0"]
    argv += ["--limit-mb", "1024", "--max-rss-growth-mb", "96"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads(result.stdout)
    assert set(summary["targets"]) == set(targets()) and summary["total_cases"] == CASES * len(targets())
