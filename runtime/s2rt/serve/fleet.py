"""`POST /v1/adapters`: import a global adapter version from a fleet server.

The file must be signed by a fleet key (`--fleet-key`, `fleet_signing`); the signature
is checked before the file is parsed. A verified version is stored as a new version,
and is activated only when the caller asks (`activate`) and the accuracy gate
(`gate.AccuracyGate`) accepts it on this device's held-out samples: a global version
that serves this device worse than its active one is kept but not served. The operator
can still activate it by hand (`POST /v1/adapters/{v}/activate`).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2rt.errors import SignatureError, StateError
from s2rt.serve.errors import ApiError
from s2rt.serve.fleet_signing import verify
from s2rt.serve.gate import VAL_FRACTION, stored_gate
from s2rt.state import HeadState, load_adapters

if TYPE_CHECKING:
    from s2rt.serve.service import Service, Serving


def check_fleet_allowed(service: Service) -> None:
    if not service.config.fleet_keys:
        raise ApiError(
            403,
            "fleet_disabled",
            "importing adapter versions is off: start the daemon with --fleet-key PUB (the fleet server's public key); "
            "versions must then be signed by that key",
            "body",
        )


def import_version(service: Service, data: bytes, signature: str | None, key_id: str | None, activate: bool) -> dict[str, Any]:
    """Verify, store and (if asked and the gate agrees) activate a signed global adapter version."""
    check_fleet_allowed(service)
    if activate:
        service.check_not_online("activating an imported version")
    deployment = service.serving.deployment
    try:
        key = verify(data, deployment.bundle.digest, signature, key_id, service.config.fleet_keys)
    except SignatureError as e:
        raise ApiError(403, "bad_signature", str(e), "signature") from None
    adapters, meta = _parse(service, data, deployment.bundle)
    candidate = HeadState.skip2lora(adapters)
    head = deployment.head(candidate)
    round_ = meta.get("round")
    origin = {"origin": "fleet", "fleet_key": key.key_id, "fleet_round": round_ if type(round_) is int else None}
    with service.jobs.exclusive("activating an imported version") if activate else contextlib.nullcontext():
        gate = stored_gate(service.samples, deployment, head, VAL_FRACTION) if activate else _stored_only
        result = service.swap_in(deployment, candidate, gate, commit_always=True, **origin)
        deployment.cache.flush()
    if "version" not in result:  # the bundle was replaced between the check and the swap
        raise ApiError(409, "conflict", result["reason"])
    return {**result, "active": service.serving.version, "activated": result["accepted"], "signed_by": key.key_id}


def _parse(service: Service, data: bytes, bundle: Any) -> tuple[Any, dict[str, Any]]:
    spool = service.state_dir / "uploads"
    spool.mkdir(mode=0o700, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=spool, prefix="adapters-") as folder:
        path = Path(folder) / "imported.npz"
        path.write_bytes(data)
        try:
            return load_adapters(path, bundle)
        except StateError as e:
            raise ApiError(422, "invalid_adapters", str(e).replace(str(path), "the adapter file"), "body") from None


def _stored_only(current: Serving) -> dict[str, Any]:
    return {"accepted": False, "reason": "stored, not activated (activate was not requested)", "metrics": {}}

