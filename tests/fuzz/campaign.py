"""A random fuzz campaign over every target, without hypothesis: fast, for long runs and the CI memory check.

    python tests/fuzz/campaign.py --cases 100000                    # per target, random seed
    python tests/fuzz/campaign.py --cases 300 --seed 0 --limit-mb 1024 --max-rss-growth-mb 96

Each case mutates a seed file of the target (tests/helpers/mutate.py) and reads it; the
target must return or raise its allowed error. With --limit-mb the address space is
capped at that much above what the process uses after start-up, so an allocation sized
by a hostile header fails loudly (MemoryError) instead of succeeding lazily; the resident
set's growth over the run is reported and checked against --max-rss-growth-mb. Prints a
JSON summary; exits 1 on any unexpected exception, any case over --max-seconds or too
much memory.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import resource
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT / "tests")]

import s2rt.bundle.reader as reader  # noqa: E402
from helpers.fuzz_targets import targets  # noqa: E402
from helpers.mutate import INTERESTING_U32, OPS, mutate  # noqa: E402


def random_ops(rng: random.Random) -> list[tuple[str, int, int, int]]:
    def value() -> int:
        return rng.choice(INTERESTING_U32) if rng.random() < 0.5 else rng.randrange(2**32)

    return [(rng.choice(OPS), rng.randrange(1 << 16), value(), rng.randrange(1 << 16)) for _ in range(rng.randint(1, 6))]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def vm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=10_000, help="cases per target")
    p.add_argument("--seed", type=int, help="random seed (default: random)")
    p.add_argument("--targets", help="comma-separated target names (default: all)")
    p.add_argument("--limit-mb", type=float, help="cap the address space this far above the start-up size")
    p.add_argument("--max-rss-growth-mb", type=float, help="fail if the resident set grows more than this")
    p.add_argument("--max-seconds", type=float, default=1.0, help="fail on any case slower than this")
    p.add_argument("--lenient", action="store_true", help="keep the bundle reader's catch-all for accessor errors")
    args = p.parse_args()

    if not args.lenient:
        reader._PARSE_ERRORS = ()  # only the structural verifier may stop a bad bundle
    chosen = targets()
    if args.targets:
        chosen = {n: chosen[n] for n in args.targets.split(",")}
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    for target in chosen.values():  # warm up: imports, caches
        target.run(target.seeds[0])
    if args.limit_mb:
        limit = int((vm_mb() + args.limit_mb) * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    rss_start = rss_mb()

    summary: dict[str, dict[str, object]] = {}
    failures = []
    for name, target in chosen.items():
        outcomes: collections.Counter[str] = collections.Counter()
        slowest = 0.0
        for _ in range(args.cases):
            ops = random_ops(rng)
            seeds = target.seeds
            data = mutate(rng.choice(seeds), ops, rng.choice(seeds))
            start = time.perf_counter()
            try:
                target.run(data)
                outcomes["accepted"] += 1
            except target.allowed:
                outcomes[target.allowed.__name__] += 1
            except BaseException as e:  # noqa: BLE001 - anything else is the bug being hunted
                outcomes[f"UNEXPECTED {type(e).__name__}"] += 1
                failures.append({"target": name, "ops": ops, "error": repr(e)[:300], "trace": traceback.format_exc(limit=4)})
            slowest = max(slowest, time.perf_counter() - start)
        summary[name] = {"cases": args.cases, "outcomes": dict(outcomes), "slowest_ms": round(slowest * 1e3, 2)}
        if slowest > args.max_seconds:
            failures.append({"target": name, "error": f"a case took {slowest:.2f} s"})
    growth = rss_mb() - rss_start
    if args.max_rss_growth_mb is not None and growth > args.max_rss_growth_mb:
        failures.append({"error": f"resident set grew {growth:.1f} MiB"})
    total = sum(int(s["cases"]) for s in summary.values())  # type: ignore[call-overload]
    report = {"seed": seed, "total_cases": total, "rss_growth_mb": round(growth, 1), "targets": summary, "failures": failures[:20]}
    print(json.dumps(report, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
