"""Who may change what the daemon serves: the control endpoints and the guard in front of them.

Control endpoints deploy a bundle (whose ONNX onnxruntime then parses inside the
daemon), start or cancel fine-tune jobs, import, activate or roll back adapter versions,
or commit the online head as a version (`--online`).
On TCP loopback every local user and process can connect, so there they need a bearer
token (`--token-file`, checked by `BearerAuth` for every endpoint) unless the operator
opts out with `--allow-unauthenticated-control`. The Unix socket is mode 0600: only the
daemon's user (and root) can connect, so connecting is the authentication. Predictions,
samples and reads stay open on loopback: a sample only changes what is served through
a job, which is a control endpoint. (With `--online` a sample does change the served head
at once: that is what the operator turned on; versions still change only through the
gated snapshots.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from s2rt.serve.middleware import ASGIApp, Receive, Scope, Send, send_error

# (method, path pattern) of every endpoint that changes what is served; `test_access.py`
# checks that every other non-GET route of the app is meant to stay open.
CONTROL: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("PUT", re.compile(r"/v1/bundle")),
    ("POST", re.compile(r"/v1/jobs")),
    ("POST", re.compile(r"/v1/jobs/[^/]+/cancel")),
    ("POST", re.compile(r"/v1/adapters/[^/]+/activate")),
    ("POST", re.compile(r"/v1/adapters/rollback")),
    ("POST", re.compile(r"/v1/adapters")),  # import a signed global version (fleet)
    ("POST", re.compile(r"/v1/online/snapshot")),  # commit the online head as a version
)
OPEN_WRITES = frozenset({("POST", "/v1/predict"), ("POST", "/v1/predict/npy"), ("POST", "/v1/samples")})


@dataclass(frozen=True)
class Access:
    """How clients reach the daemon; decides whether control endpoints need more than a connection."""

    tokens: bool = False  # bearer tokens configured: every endpoint but health already needs one
    unix_socket: bool = False  # a 0600 Unix socket: only the daemon's user can connect
    allow_unauthenticated_control: bool = False

    @property
    def control_open(self) -> bool:
        return self.tokens or self.unix_socket or self.allow_unauthenticated_control

    def warnings(self) -> list[str]:
        if self.allow_unauthenticated_control and not (self.tokens or self.unix_socket):
            return ["--allow-unauthenticated-control: any local process can deploy bundles, start jobs and switch adapters"]
        return []


def is_control(method: str, path: str) -> bool:
    return any(method == m and pattern.fullmatch(path) for m, pattern in CONTROL)


class ControlGuard:
    """403 for control endpoints when `access` does not authenticate clients; answers before any body is read."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app, self.access = app, access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.access.control_open and is_control(scope["method"], scope["path"]):
            await send_error(
                send,
                403,
                "forbidden",
                f"{scope['method']} {scope['path']} changes what the daemon serves, and on TCP without --token-file any local "
                "process could call it: use a bearer token (--token-file), the owner-only Unix socket (--uds), or start the "
                "daemon with --allow-unauthenticated-control",
            )
            return
        await self.app(scope, receive, send)
