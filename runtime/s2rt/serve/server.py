"""`s2rt serve`: the daemon's life — startup → serve → shutdown.

Startup opens the state directory (one daemon per directory), the bundle, the active
adapters and the sample database, then binds: 127.0.0.1 by default, a non-loopback
address only with bearer tokens, or a Unix socket created with mode 0600. Serving is
uvicorn. SIGTERM or SIGINT stops accepting, lets requests in flight finish (bounded
by --shutdown-timeout), lets a running fine-tune job finish within half that time or
else cancels it (its samples are safe, the active adapters stay), waits for it
(bounded), closes the database and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from s2rt.bundle.signing import PublicKey
from s2rt.errors import KeyFileError, RuntimeInputError
from s2rt.serve.access import Access
from s2rt.serve.app import Limits, create_app
from s2rt.serve.connections import Deadlines, guarded_protocol
from s2rt.serve.logs import setup_logging
from s2rt.serve.online import OnlineOptions
from s2rt.serve.service import Service, ServiceConfig
from s2rt.trust import load_trusted_keys, trusted_keys_from

log = logging.getLogger("s2rt.serve")

MIN_TOKEN_LENGTH = 16


class Daemon(uvicorn.Server):
    """uvicorn's server, telling us once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_ready()


def online_options(args: argparse.Namespace) -> OnlineOptions | None:
    """--online and its settings; a setting without --online is an error rather than silently ignored."""
    settings = {
        "warmup": ("--online-warmup", args.online_warmup),
        "holdout": ("--online-holdout", args.online_holdout),
        "snapshot_every": ("--snapshot-every", args.snapshot_every),
        "snapshot_seconds": ("--snapshot-seconds", args.snapshot_seconds),
    }
    given = {name: value for name, (_, value) in settings.items() if value is not None}
    if args.online is None:
        if given:
            raise RuntimeInputError(f"{', '.join(settings[name][0] for name in given)}: only with --online")
        return None
    return OnlineOptions(args.online, **given)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    started = time.perf_counter()
    tokens = read_tokens(Path(args.token_file)) if args.token_file else ()
    if args.uds is None:
        check_host(args.host, tokens)
    config = ServiceConfig(
        state_dir=Path(args.state_dir),
        bundle=Path(args.bundle) if args.bundle else None,
        backend=args.backend,
        threads=args.threads,
        cache_capacity=args.cache_capacity,
        trusted_keys=trusted_keys_from(args.trusted_key),
        allow_unsigned_deploy=args.allow_unsigned_deploy,
        fleet_keys=fleet_keys(args.fleet_key),
        allow_new_classes=args.allow_new_classes,
        online=online_options(args),
    )
    access = Access(bool(tokens), args.uds is not None, args.allow_unauthenticated_control)
    for warning in access.warnings():
        log.warning(warning)
    service = Service(config)
    uds = Path(args.uds) if args.uds else None
    sock = None
    try:
        sock = bind_unix(uds) if uds else bind_tcp(args.host, args.port)
        where: dict[str, Any] = {"uds": str(uds)} if uds else {"host": args.host, "port": sock.getsockname()[1]}
        app = create_app(service, tokens, Limits(args.max_body_bytes, args.max_bundle_bytes), args.access_log, access)
        server = Daemon(
            uvicorn.Config(
                app,
                http=guarded_protocol(Deadlines(idle=args.idle_timeout, body=args.body_timeout)),
                lifespan="off",
                log_config=None,
                access_log=False,
                proxy_headers=False,
                server_header=False,
                limit_concurrency=args.max_connections,
                timeout_graceful_shutdown=args.shutdown_timeout,
            ),
            on_ready=lambda: log.info(
                "ready",
                extra={
                    "event": "ready",
                    **where,
                    "pid": os.getpid(),
                    "bundle_digest": service.serving.deployment.bundle.digest,
                    "adapter_version": service.serving.version,
                    "startup_seconds": round(time.perf_counter() - started, 4),
                },
            ),
        )
        with _signals_end_quietly():
            server.run(sockets=[sock])
    finally:
        service.close(args.shutdown_timeout)
        if uds is not None and sock is not None:  # only the socket this daemon created
            uds.unlink(missing_ok=True)
    log.info("stopped", extra={"event": "stopped"})
    return 0


@contextlib.contextmanager
def _signals_end_quietly() -> Iterator[None]:
    """uvicorn handles SIGTERM/SIGINT while it serves and re-raises them after a graceful stop;
    with these no-op handlers underneath, that re-raise ends in a normal exit (status 0)."""
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def fleet_keys(paths: list[str] | None) -> tuple[PublicKey, ...]:
    try:
        return load_trusted_keys(paths or ())
    except KeyFileError as e:
        raise KeyFileError(f"--fleet-key {e}") from None


def read_tokens(path: Path) -> tuple[bytes, ...]:
    """Bearer tokens, one per line (blank lines and # comments ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as e:
        raise RuntimeInputError(f"--token-file {path}: cannot read it ({e})") from None
    tokens = []
    for n, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
            raise RuntimeInputError(
                f"--token-file {path}: the token on line {n} must be at least {MIN_TOKEN_LENGTH} characters without spaces "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        tokens.append(token.encode())
    if not tokens:
        raise RuntimeInputError(f"--token-file {path}: holds no token")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("token file %s is readable by other users; chmod 600 it", path)
    return tuple(tokens)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, tokens: tuple[bytes, ...]) -> None:
    if not is_loopback(host) and not tokens:
        raise RuntimeInputError(
            f"--host {host} is not a loopback address: refusing to serve it without authentication; "
            "give --token-file (bearer tokens), or use --uds PATH or the default 127.0.0.1"
        )


def bind_tcp(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise RuntimeInputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(1024)
    return sock


def bind_unix(path: Path) -> socket.socket:
    """A Unix socket only its owner can connect to (mode 0600 from the moment it exists)."""
    if path.is_symlink() or path.exists():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise RuntimeInputError(f"--uds {path}: exists and is not a socket; not touching it")
        if _answers(path):
            raise RuntimeInputError(f"--uds {path}: another process is listening on it")
        path.unlink()  # stale socket of a daemon that died
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as e:
        sock.close()
        raise RuntimeInputError(f"--uds {path}: cannot bind: {e.strerror or e}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(1024)
    return sock


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True
