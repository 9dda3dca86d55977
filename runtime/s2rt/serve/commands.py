"""The `serve` and `client` subcommands' parsers. Importing this needs only the standard
library: FastAPI and uvicorn are imported when `s2rt serve` actually runs."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path
from typing import TypeAlias

from s2rt.backend import BACKENDS
from s2rt.bundle.foreign import refuse_foreign
from s2rt.clikit import check_folder, int_at_least

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

DEFAULT_PORT = 8470


def add_serve(sub: Subparsers) -> None:
    p = sub.add_parser(
        "serve",
        help="run the on-device daemon: predict, collect labelled samples, fine-tune (needs the `serve` extra)",
        description="HTTP/JSON API under /v1 (OpenAPI schema at /v1/openapi.json) on 127.0.0.1 or a Unix socket.",
    )
    p.add_argument("bundle", nargs="?", help="the .s2l bundle to serve (default: the one deployed in --state-dir)")
    p.add_argument("--state-dir", required=True, help="where samples, adapter versions, the cache and the deployed bundle live")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; others need --token-file)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--uds", metavar="PATH", help="listen on this Unix socket (mode 0600) instead of TCP")
    p.add_argument("--token-file", help="bearer tokens, one per line; required for a non-loopback --host")
    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS], help="inference backend (default: auto)")
    p.add_argument("--threads", type=_positive, default=1, help="backend threads per request (default: 1)")
    p.add_argument("--cache-capacity", type=_positive, default=20_000, help="samples the Skip-Cache file holds (default 20000)")
    p.add_argument("--max-body-bytes", type=_positive, default=8 << 20, help="largest request body (default 8 MiB)")
    p.add_argument(
        "--max-bundle-bytes",
        type=_positive,
        default=16 << 20,
        help="largest bundle upload, streamed to a file in --state-dir (default 16 MiB; bundles are usually 20-100 KB)",
    )
    p.add_argument(
        "--max-connections",
        type=_positive,
        default=256,
        help="open connections; at the limit the ones waiting longest for bytes are closed, and only when all are busy "
        "do requests get 503 (default 256)",
    )
    p.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=10.0,
        help="close a connection that has not sent a whole request head within this many seconds of connecting "
        "or of its last answer (default 10)",
    )
    p.add_argument(
        "--body-timeout", type=_seconds, default=60.0, help="close a connection whose request body takes longer than this (default 60)"
    )
    p.add_argument("--shutdown-timeout", type=float, default=10.0, help="seconds to wait for requests and the job on stop (default 10)")
    p.add_argument(
        "--trusted-key",
        action="append",
        metavar="PUB",
        help="serve and accept uploads only of bundles signed by this public key (a .pub file or a folder of them); "
        "repeatable; also read from $S2RT_TRUSTED_KEYS",
    )
    p.add_argument(
        "--fleet-key",
        action="append",
        metavar="PUB",
        help="accept global adapter versions (POST /v1/adapters, from a fleet server) signed by this public key "
        "(a .pub file or a folder of them); repeatable; without it imports are refused",
    )
    p.add_argument(
        "--allow-unsigned-deploy",
        action="store_true",
        help="accept uploaded bundles (PUT /v1/bundle) without a --trusted-key to check them against; "
        "by default uploads are refused unless a trusted key signed them",
    )
    p.add_argument(
        "--allow-new-classes",
        action="store_true",
        help="store samples whose label name the bundle lacks as new classes (POST /v1/samples); the next job grows the "
        "skip2lora head by a row per class, and the labels served include them once a version with them is active "
        "(by default such samples are refused)",
    )
    p.add_argument(
        "--allow-unauthenticated-control",
        action="store_true",
        help="on TCP without --token-file, let any local process deploy bundles, start or cancel jobs and activate or "
        "roll back adapters (by default these need a token or the --uds socket)",
    )
    p.add_argument(
        "--online",
        nargs="?",
        const="oselm",
        choices=["oselm", "oselm-rf"],
        help="learn online: the served head is an OS-ELM head (default oselm; oselm-rf adds 256 random ReLU features) "
        "that learns every labelled sample (POST /v1/samples; but the --online-holdout share) by one recursive-least-squares "
        "step before answering, so "
        "the next prediction already reflects it; after a closed-form warm-up fit on the first --online-warmup samples. "
        "Snapshots become adapter versions through the accuracy gate (--snapshot-every, --snapshot-seconds, "
        "POST /v1/online/snapshot); a restart resumes from the last one plus the samples stored after it. "
        "Jobs, activate and rollback are refused meanwhile. Classifier bundles only",
    )
    p.add_argument(
        "--online-warmup",
        type=int_at_least(10),
        help="with --online: learnable samples fitted in closed form (the tap standardization is fixed from them) "
        "before learning goes sample by sample; kappa and lambda are picked again at 2, 4, 8, ... times as many (default 64)",
    )
    p.add_argument(
        "--online-holdout",
        type=_share,
        help="with --online: share of samples (fixed by content, as for jobs) that judge snapshots and pick kappa and lambda "
        "and are never learned (default 0.2; 0 learns every sample, keeps the warm-up's kappa and lambda and commits "
        "snapshots unchecked)",
    )
    p.add_argument(
        "--snapshot-every",
        type=int_at_least(0),
        help="with --online: take a snapshot after this many newly learned samples (default 256; 0: not by count)",
    )
    p.add_argument(
        "--snapshot-seconds",
        type=_snapshot_seconds,
        help="with --online: also take one this many seconds after the last when samples were learned meanwhile (default 0: off)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    if args.bundle:
        refuse_foreign(args.bundle)
    check_folder("--state-dir", args.state_dir)
    private_state(Path(args.state_dir))
    try:
        from s2rt.serve.server import run
    except ImportError as e:
        from s2rt.errors import S2LError

        raise S2LError(f"s2rt serve needs FastAPI and uvicorn: pip install 's2l-runtime[serve]' ({e})") from None
    return run(args)


def private_state(state_dir: Path) -> None:
    """The daemon's files (sample database, adapter versions, stored bundles, cache) are
    0600 whatever the umask and whatever the modes of a --state-dir made beforehand: the
    process umask becomes 077 for the daemon's life, and files already there are narrowed."""
    os.umask(0o077)
    for folder, _, names in os.walk(state_dir):
        for name in names:
            path = os.path.join(folder, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.chmod(path, 0o600)


def add_client(sub: Subparsers) -> None:
    from s2rt.serve.client import add_client_commands

    add_client_commands(sub)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 86400], got {value}")
    return value


_positive = int_at_least(1)


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1), got {value}")
    return value


def _snapshot_seconds(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0.0") else _seconds(text)


def _port(text: str) -> int:
    port = int_at_least(0)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port in [0, 65535], got {port}")
    return port
