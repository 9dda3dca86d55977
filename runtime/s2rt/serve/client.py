"""`s2rt client …`: every endpoint of a running `s2rt serve`, from the command line.

Standard library only (http.client), over TCP or the daemon's Unix socket:

    s2rt client ready
    s2rt client ingest --data ft.npz
    s2rt client train --epochs 20 --wait
    s2rt client --uds /run/s2rt/s2rt.sock predict --data new.csv

Prints the daemon's JSON answer; exits 1 with its error message on a 4xx/5xx.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import socket
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from s2rt.bundle.model import DType, InputSignature
from s2rt.clikit import int_at_least, positive_float
from s2rt.data import load_samples
from s2rt.errors import S2LError

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
DEFAULT_URL = "http://127.0.0.1:8470"


class ClientError(S2LError):
    """The daemon cannot be reached or answered with an error."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    def __init__(self, url: str = DEFAULT_URL, uds: str | None = None, token: str | None = None, timeout: float = 60.0) -> None:
        self.url, self.uds, self.token, self.timeout = url, uds, token, timeout
        parts = urllib.parse.urlsplit(url)
        if not uds and (parts.scheme != "http" or not parts.hostname):
            raise ClientError(f"--url {url!r}: expected http://HOST:PORT")
        self.host, self.port = parts.hostname or "localhost", parts.port or 80

    def _connection(self) -> http.client.HTTPConnection:
        if self.uds:
            return _UnixConnection(self.uds, self.timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None, extra: dict[str, str] | None = None
    ) -> tuple[int, str, bytes]:
        headers = {"accept": "application/json", **(extra or {})}
        if content_type:
            headers["content-type"] = content_type
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        conn = self._connection()
        where = self.uds or self.url
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheader("content-type", ""), response.read()
        except (OSError, http.client.HTTPException) as e:
            raise ClientError(f"cannot reach the daemon at {where}: {e}") from None
        finally:
            conn.close()

    def call(self, method: str, path: str, payload: Any = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        """JSON in (or raw bytes, with extra `headers`), JSON out; ClientError with the daemon's message on an error status."""
        if raw is not None:
            status, kind, data = self.request(method, path, raw, "application/octet-stream", headers)
        elif payload is not None:
            status, kind, data = self.request(method, path, json.dumps(payload).encode(), "application/json")
        else:
            status, kind, data = self.request(method, path)
        if status >= 400:
            try:
                message = json.loads(data)["message"]
            except (ValueError, KeyError, TypeError):
                message = data.decode(errors="replace")[:500]
            raise ClientError(f"{method} {path}: {status}: {message}")
        if kind.startswith("application/json"):
            return json.loads(data)
        return data


def add_client_commands(sub: Subparsers) -> None:
    p = sub.add_parser("client", help="talk to a running `s2rt serve` (every endpoint)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the daemon's address (default {DEFAULT_URL})")
    p.add_argument("--uds", metavar="PATH", help="connect through this Unix socket instead")
    p.add_argument("--token-file", help="file whose first token is sent as the bearer token")
    p.add_argument("--timeout", type=positive_float, default=60.0, help="seconds per request (default 60)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str, **paths: Any) -> argparse.ArgumentParser:
        a = actions.add_parser(name, help=help)
        a.set_defaults(run=_run, **paths)
        return a

    action("live", "liveness", get="/v1/health/live")
    action("ready", "readiness", get="/v1/health/ready")
    action("model", "the served bundle's metadata", get="/v1/model")
    action("metrics", "Prometheus metrics", get="/v1/metrics")
    action("jobs", "latest fine-tune jobs", get="/v1/jobs")
    action("adapters", "adapter versions with their metrics", get="/v1/adapters")
    action("rollback", "re-activate the previous adapter version", post="/v1/adapters/rollback")
    action("online", "the online learner (s2rt serve --online): samples learned, since the last snapshot", get="/v1/online")
    action("snapshot", "commit the online head as an adapter version if the accuracy gate accepts it", post="/v1/online/snapshot")
    for name, help, path, post in (
        ("job", "one job's state and progress", "/v1/jobs/{id}", False),
        ("cancel", "cancel a running job", "/v1/jobs/{id}/cancel", True),
        ("sample", "one stored sample", "/v1/samples/{id}", False),
        ("version", "one adapter version", "/v1/adapters/{id}", False),
        ("activate", "serve this adapter version", "/v1/adapters/{id}/activate", True),
    ):
        a = action(name, help, **({"post": path} if post else {"get": path}))
        a.add_argument("id", type=int)
    a = action("samples", "sample counts per class and a page of ids")
    a.add_argument("--after-id", type=int, default=0)
    a.add_argument("--limit", type=int, default=1000)
    a.set_defaults(special=_samples)
    a = action("predict", "predict the samples of a file (.npz with x, or .csv)")
    a.add_argument("--data", required=True)
    a.add_argument("--npy", action="store_true", help="send a raw .npy body instead of JSON")
    a.set_defaults(special=_predict)
    a = action("ingest", "store the labelled samples of a file (.npz with x and y, or .csv)")
    a.add_argument("--data", required=True)
    a.add_argument("--batch", type=int_at_least(1), default=256, help="samples per request (default 256)")
    a.set_defaults(special=_ingest)
    a = action("train", "start a fine-tune job")
    for flag, kind in (("--epochs", int), ("--batch-size", int), ("--lr", float), ("--seed", int), ("--val-fraction", float)):
        a.add_argument(flag, type=kind)
    a.add_argument("--optimizer", choices=["sgd", "adam"])
    a.add_argument("--method", help="fine-tuning method (as s2rt train --method; default: the start version's)")
    a.add_argument("--no-check", action="store_true", help="activate without the held-out accuracy check")
    a.add_argument(
        "--no-new-classes", action="store_true", help="train on the start version's classes only, not the new ones samples brought"
    )
    start = a.add_mutually_exclusive_group()
    start.add_argument("--from-initial", action="store_true", help="start from the bundle's initial head, not the active adapters")
    start.add_argument("--from-version", type=int_at_least(0), metavar="N", help="start from adapter version N, not the active one")
    a.add_argument(
        "--commit-always", action="store_true", help="keep the trained adapters as a version even when the accuracy check rejects them"
    )
    a.add_argument("--wait", action="store_true", help="wait for the job to end and print its final state")
    a.set_defaults(special=_train)
    a = action("download", "download an adapter version (.npz)")
    a.add_argument("id", type=int)
    a.add_argument("-o", "--output", required=True)
    a.set_defaults(special=_download)
    a = action("deploy", "upload a bundle to serve (verified first; signed by a trusted key unless the daemon has --allow-unsigned-deploy)")
    a.add_argument("file")
    a.set_defaults(special=_deploy)
    a = action("bundle", "download the served bundle")
    a.add_argument("-o", "--output", required=True)
    a.set_defaults(special=_bundle)


def _client(args: argparse.Namespace) -> Client:
    token = None
    if args.token_file:
        try:
            lines = Path(args.token_file).read_text(encoding="utf-8").split()
        except OSError as e:
            raise ClientError(f"--token-file {args.token_file}: {e.strerror}") from None
        token = next((t for t in lines if not t.startswith("#")), None)
    return Client(args.url, args.uds, token, args.timeout)


def _run(args: argparse.Namespace) -> int:
    client = _client(args)
    special = getattr(args, "special", None)
    if special is not None:
        result = special(client, args)
    elif getattr(args, "post", None):
        result = client.call("POST", args.post.format(id=getattr(args, "id", "")))
    else:
        result = client.call("GET", args.get.format(id=getattr(args, "id", "")))
    if isinstance(result, bytes):
        sys.stdout.write(result.decode(errors="replace"))
    elif result is not None:
        print(json.dumps(result, indent=2))
    return 0


def _signature(client: Client) -> tuple[InputSignature, int]:
    info = client.call("GET", "/v1/model")
    inp = info["input"]
    return InputSignature(inp["name"], tuple(inp["shape"]), DType[inp["dtype"].upper()]), len(info["labels"])


def _samples(client: Client, args: argparse.Namespace) -> Any:
    return client.call("GET", f"/v1/samples?after_id={args.after_id}&limit={args.limit}")


def _predict(client: Client, args: argparse.Namespace) -> Any:
    sig, classes = _signature(client)
    x = load_samples(args.data, sig, classes).x
    if args.npy:
        buffer = io.BytesIO()
        np.save(buffer, x, allow_pickle=False)
        return client.call("POST", "/v1/predict/npy", raw=buffer.getvalue())
    return client.call("POST", "/v1/predict", {"x": x.tolist()})


def _ingest(client: Client, args: argparse.Namespace) -> Any:
    sig, classes = _signature(client)
    names: list[str] = []

    def by_name(y: np.ndarray) -> np.ndarray:  # label names go to the daemon as names: it resolves them (and new classes)
        unique, inverse = np.unique(y, return_inverse=True)
        names[:] = [str(n) for n in unique]
        return np.asarray(inverse, np.int64).reshape(-1)

    samples = load_samples(args.data, sig, classes, require_labels=True, label_index=by_name)
    assert samples.y is not None
    labels = [names[i] for i in samples.y] if names else samples.y.tolist()
    ids: list[int] = []
    for start in range(0, len(samples.x), max(1, args.batch)):
        end = start + max(1, args.batch)
        ids += client.call("POST", "/v1/samples", {"x": samples.x[start:end].tolist(), "y": labels[start:end]})["ids"]
    return {"count": len(ids), "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None}


def _train(client: Client, args: argparse.Namespace) -> Any:
    options = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "optimizer": args.optimizer,
        "method": args.method,
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "check_accuracy": False if args.no_check else None,
        "start_from": "initial" if args.from_initial else args.from_version,
        "commit": "always" if args.commit_always else None,
        "new_classes": False if args.no_new_classes else None,
    }
    job = client.call("POST", "/v1/jobs", {k: v for k, v in options.items() if v is not None})
    while args.wait and job["state"] == "running":
        time.sleep(0.5)
        job = client.call("GET", f"/v1/jobs/{job['id']}")
    return job


def _download(client: Client, args: argparse.Namespace) -> Any:
    Path(args.output).write_bytes(client.call("GET", f"/v1/adapters/{args.id}/download"))
    return {"version": args.id, "output": args.output}


def _deploy(client: Client, args: argparse.Namespace) -> Any:
    try:
        data = Path(args.file).read_bytes()
    except OSError as e:
        raise ClientError(f"{args.file}: {e.strerror}") from None
    return client.call("PUT", "/v1/bundle", raw=data)


def _bundle(client: Client, args: argparse.Namespace) -> Any:
    Path(args.output).write_bytes(client.call("GET", "/v1/bundle"))
    return {"output": args.output}
