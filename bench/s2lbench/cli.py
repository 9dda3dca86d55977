"""Command line: `run` (default) starts one worker process per profile, then writes the report.

run.py [--quick] [--profiles edge,default] [--workloads har,fan] [--methods ...] [--out DIR]
run.py worker --profile P --config JSON --out FILE [--lrs FILE]    (one profile, in its own process)
run.py rss --profile P --workload W --method M ...                  (one peak-RSS measurement)
run.py report DIR                                                   (re-render the table and plot)
run.py cnn [--quick] [--out DIR]                                    (the CNN benchmark: peers, costs, corruptions)
run.py cnn-report [DIR]                                             (re-render cnn.md and cnn.png from cnn.json)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RUN_PY = HERE.parent / "run.py"
RESULTS = HERE.parent / "results"


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def config_from(args: argparse.Namespace) -> Any:
    from s2lbench.suite import QUICK, BenchConfig
    from s2lbench.workloads import available

    config = (
        QUICK
        if args.quick
        else BenchConfig(workloads=tuple(available()), epochs_by_kind={"cnn": 5}, grid_by_kind={"cnn": 2}, tap_pool_by_kind={"cnn": 2})
    )
    changes: dict[str, Any] = {}
    if args.workloads:
        changes["workloads"] = _csv(args.workloads)
    if args.methods:
        changes["methods"] = _csv(args.methods)
    if args.epochs is not None:
        changes["epochs"], changes["epochs_by_kind"] = args.epochs, {}
    if args.repeats is not None:
        changes["repeats"] = args.repeats
    if args.no_rss:
        changes["rss_methods"] = ()
    if args.long_factor:
        changes["long_factor"] = args.long_factor
    return dataclasses.replace(config, **changes)


def run(args: argparse.Namespace) -> int:
    from s2lbench.profiles import PROFILES
    from s2lbench.report import markdown, plot

    config = config_from(args)
    out = Path(args.out) if args.out else RESULTS / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    profiles = _csv(args.profiles or ("edge" if args.quick else "edge,default"))
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        raise SystemExit(f"unknown profiles {unknown}; known: {', '.join(PROFILES)}")
    config_json = json.dumps(dataclasses.asdict(config))
    results, lrs_from = [], None
    started = time.perf_counter()
    for name in profiles:
        path = out / f"{name}.json"
        cmd = [sys.executable, str(RUN_PY), "worker", "--profile", name, "--config", config_json, "--out", str(path)]
        if lrs_from is not None:
            cmd += ["--lrs", str(lrs_from)]
        print(f"== profile {name}", file=sys.stderr, flush=True)
        subprocess.run(cmd, env=PROFILES[name].child_env(), check=True)
        results.append(json.loads(path.read_text()))
        lrs_from = lrs_from or path  # later profiles train with the first profile's learning rates
    write_report(results, out, markdown, plot)
    print(f"\nbenchmark done in {time.perf_counter() - started:.0f} s: {out / 'results.md'}", file=sys.stderr)
    return 0


def write_report(results: list[dict[str, Any]], out: Path, markdown: Any, plot: Any) -> None:
    plot(results, out / "results.png")
    text = markdown(results, "results.png")
    (out / "results.md").write_text(text)
    print(text)


def worker(args: argparse.Namespace) -> int:
    from s2lbench.profiles import PROFILES, check_environment
    from s2lbench.suite import BenchConfig, run_profile, write_json

    profile = PROFILES[args.profile]
    check_environment(profile)
    raw = json.loads(args.config)
    for key in ("workloads", "methods", "rss_methods"):
        if raw.get(key) is not None:
            raw[key] = tuple(raw[key])
    config = BenchConfig(**raw)
    known = json.loads(Path(args.lrs).read_text()) if args.lrs else None
    write_json(Path(args.out), run_profile(config, profile, known))
    return 0


def report(args: argparse.Namespace) -> int:
    from s2lbench.report import markdown, plot

    out = Path(args.dir)
    results = [json.loads((out / f"{name}.json").read_text()) for name in ("edge", "default") if (out / f"{name}.json").exists()]
    if not results:
        raise SystemExit(f"{out}: no edge.json or default.json")
    write_report(results, out, markdown, plot)
    return 0


def rss(args: argparse.Namespace) -> int:
    from s2lbench.profiles import PROFILES, check_environment
    from s2lbench.rss import child

    check_environment(PROFILES[args.profile])
    return child(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/run.py", description="s2rt Skip2-LoRA vs PyTorch, PEFT and onnxruntime-training")
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="the benchmark (default)")
    for target in (p, r):
        target.add_argument("--quick", action="store_true", help="a small slice (make bench-quick)")
        target.add_argument("--profiles", help="comma-separated: edge, default (default: both; --quick: edge)")
        target.add_argument("--workloads", help="comma-separated workload names (default: every model in models.json)")
        target.add_argument("--methods", help="comma-separated method names (default: all available)")
        target.add_argument("--epochs", type=int, help="fine-tuning epochs (default 20; 5 for CNNs)")
        target.add_argument("--repeats", type=int, help="timed runs per method (default 5)")
        target.add_argument("--no-rss", action="store_true", help="skip the per-method peak-RSS processes")
        target.add_argument(
            "--long-factor", type=int, help="also run FT-All and skip2relu at this many times the epochs, cosine learning rate"
        )
        target.add_argument("--out", help="output directory (default bench/results, quick: bench/results/quick)")
    w = sub.add_parser("worker", help="one profile (run in a process started with the profile's environment)")
    w.add_argument("--profile", required=True)
    w.add_argument("--config", required=True, help="BenchConfig as JSON")
    w.add_argument("--out", required=True)
    w.add_argument("--lrs", help="a profile result whose learning rates to reuse")
    s = sub.add_parser("rss", help="peak RSS of one fine-tuning run")
    s.add_argument("--profile", required=True)
    s.add_argument("--workload", required=True)
    s.add_argument("--method", required=True)
    s.add_argument("--lr", type=float, required=True)
    s.add_argument("--epochs", type=int, required=True)
    s.add_argument("--batch-size", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--matched-rank", type=int, default=0)
    s.add_argument("--bundle")
    s.add_argument("--max-ft", type=int)
    s.add_argument("--max-test", type=int)
    rep = sub.add_parser("report", help="re-render results.md and results.png from the JSON")
    rep.add_argument("dir", nargs="?", default=str(RESULTS))
    for name, text in (
        ("cnn", "the CNN benchmark (make bench-cnn)"),
        ("cnn-worker", "the CNN benchmark in this process (edge environment)"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("--quick", action="store_true", help="a tiny slice (make bench-quick)")
        c.add_argument("--workloads", help="comma-separated reference CNNs (default: digits_cnn,mnist_cnn)")
        c.add_argument("--out", required=name == "cnn-worker", help="cnn: output directory; cnn-worker: the JSON file")
    crep = sub.add_parser("cnn-report", help="re-render cnn.md and cnn.png from cnn.json")
    crep.add_argument("dir", nargs="?", default=str(RESULTS))
    return p


def cnn(args: argparse.Namespace) -> int:
    """The CNN benchmark in a worker process with the edge profile's environment, then its report."""
    from s2lbench.profiles import PROFILES

    out = Path(args.out) if args.out else RESULTS / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cmd = [sys.executable, str(RUN_PY), "cnn-worker", "--out", str(out / "cnn.json")] + (["--quick"] if args.quick else [])
    cmd += ["--workloads", args.workloads] if args.workloads else []
    subprocess.run(cmd, env=PROFILES["edge"].child_env(), check=True)
    write_cnn_report(out)
    print(f"\nCNN benchmark done in {time.perf_counter() - started:.0f} s: {out / 'cnn.md'}", file=sys.stderr)
    return 0


def cnn_worker(args: argparse.Namespace) -> int:
    from s2lbench.cnn_suite import QUICK, CnnConfig, run
    from s2lbench.profiles import PROFILES, check_environment
    from s2lbench.suite import write_json

    check_environment(PROFILES["edge"])
    config = QUICK if args.quick else CnnConfig()
    if args.workloads:
        config = dataclasses.replace(config, workloads=_csv(args.workloads))
    write_json(Path(args.out), run(config, PROFILES["edge"]))
    return 0


def write_cnn_report(out: Path) -> None:
    from s2lbench.cnn_report import markdown, plot

    result = json.loads((out / "cnn.json").read_text())
    plot(result, out / "cnn.png")
    text = markdown(result, "cnn.png")
    (out / "cnn.md").write_text(text)
    print(text)


def cnn_report(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    if not (out / "cnn.json").exists():
        raise SystemExit(f"{out}: no cnn.json (make bench-cnn writes it)")
    write_cnn_report(out)
    return 0


COMMANDS = {
    None: run,
    "run": run,
    "worker": worker,
    "rss": rss,
    "report": report,
    "cnn": cnn,
    "cnn-worker": cnn_worker,
    "cnn-report": cnn_report,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return COMMANDS[args.command](args)
