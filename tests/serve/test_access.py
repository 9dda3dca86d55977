"""Who may change what the daemon serves. On TCP loopback without a token, control endpoints
(deploy, jobs, activate, roll back) answer 403; predictions and samples stay open. A token or
the 0600 Unix socket opens them; uploads also need a trusted key or --allow-unsigned-deploy."""

from __future__ import annotations

import httpx
import pytest
from helpers.keys import test_key
from helpers.tiny import tiny_bundle
from s2rt.bundle import write_bundle
from s2rt.serve.access import CONTROL, OPEN_WRITES, is_control

TOKEN = "control-token-0123456789abcdef"
CALLS = [
    ("PUT", "/v1/bundle"),
    ("POST", "/v1/jobs"),
    ("POST", "/v1/jobs/1/cancel"),
    ("POST", "/v1/adapters/1/activate"),
    ("POST", "/v1/adapters/rollback"),
]


def call(client: httpx.Client, method: str, path: str, bundle: bytes) -> httpx.Response:
    if method == "PUT":
        return client.put(path, content=bundle)
    return client.post(path, json={"epochs": 1} if path == "/v1/jobs" else None)


def test_tcp_without_token_refuses_control_but_serves_predictions_and_samples(serve, tiny_file):
    d = serve(str(tiny_file))
    for method, path in CALLS:
        refused = call(d.client, method, path, tiny_file.read_bytes())
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json()["error"] == "forbidden" and "--token-file" in refused.json()["message"]
    assert d.client.post("/v1/predict", json={"x": [0.1] * 6}).status_code == 200
    assert d.client.post("/v1/samples", json={"x": [0.1] * 6, "y": 0}).status_code == 201
    assert d.client.get("/v1/adapters").json()["active"] == 0


def test_a_token_or_the_unix_socket_opens_control_and_uploads_still_need_a_signature(serve, tiny_file, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    tokens.chmod(0o600)
    d = serve(str(tiny_file), "--token-file", str(tokens))
    with httpx.Client(base_url=d.url, headers={"authorization": f"Bearer {TOKEN}"}) as h:
        assert h.post("/v1/adapters/rollback").status_code == 409, "allowed: refused only because there is nothing to roll back"
        off = h.put("/v1/bundle", content=tiny_file.read_bytes())
        assert off.status_code == 403 and off.json()["error"] == "deploy_disabled" and "--trusted-key" in off.json()["message"]
    assert d.stop() == 0

    sock = tmp_path / "s.sock"
    d = serve(str(tiny_file), "--uds", str(sock), state=tmp_path / "uds")
    assert d.client.post("/v1/adapters/rollback").status_code == 409
    assert d.client.put("/v1/bundle", content=tiny_file.read_bytes()).json()["error"] == "deploy_disabled"
    assert d.stop() == 0


def test_a_trusted_key_turns_uploads_on_for_signed_bundles_only(serve, tmp_path):
    key = test_key(1)
    key.save(tmp_path / "owner")
    signed, unsigned = tmp_path / "signed.s2l", tmp_path / "unsigned.s2l"
    write_bundle(tiny_bundle(seed=1), signed, key)
    write_bundle(tiny_bundle(seed=2), unsigned)
    sock = tmp_path / "s.sock"
    d = serve(str(signed), "--uds", str(sock), "--trusted-key", str(tmp_path / "owner.pub"), "--allow-unsigned-deploy")
    refused = d.client.put("/v1/bundle", content=unsigned.read_bytes())
    assert refused.status_code == 422 and "bundle is not signed" in refused.json()["message"], "a trusted key wins over the opt-in"


def test_the_opt_in_opens_control_on_tcp_and_says_so(serve, tiny_file):
    d = serve(str(tiny_file), "--allow-unauthenticated-control", "--allow-unsigned-deploy")
    assert d.client.post("/v1/adapters/rollback").status_code == 409
    assert d.client.put("/v1/bundle", content=tiny_file.read_bytes()).json()["changed"] is False
    warnings = [e["msg"] for e in d.events() if e.get("level") == "warning"]
    assert any("any local process can deploy" in w for w in warnings) and any("without a signature check" in w for w in warnings)


@pytest.mark.parametrize(("method", "path"), CALLS)
def test_control_paths_are_recognised(method, path):
    assert is_control(method, path)
    assert not is_control("GET", path) and not is_control(method, path + "/x")


def test_every_write_route_is_either_control_or_meant_to_be_open(tiny_file, tmp_path):
    from s2rt.serve.app import create_app
    from s2rt.serve.service import Service, ServiceConfig

    service = Service(ServiceConfig(tmp_path / "state", tiny_file))
    try:
        app = create_app(service)
        writes = {(m, r.path) for r in app.routes for m in getattr(r, "methods", ()) if m not in ("GET", "HEAD")}
    finally:
        service.close(1.0)
    control = {(m, p) for m, p in writes if is_control(m, p.replace("{job_id}", "1").replace("{version}", "1"))}
    assert len(control) == len(CONTROL)
    assert writes - control == OPEN_WRITES
