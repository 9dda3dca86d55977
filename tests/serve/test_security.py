"""Where the daemon listens and who may talk to it: loopback by default, a 0600 Unix socket,
bearer tokens (required off loopback), one daemon per state directory."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import httpx
import pytest
from helpers.daemon import ROOT
from s2rt.serve.server import check_host, is_loopback

TOKEN = "s3cret-token-0123456789abcdef"


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}
    return subprocess.run([sys.executable, "-m", "s2rt", "serve", *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_unix_socket_is_mode_0600_and_a_stale_one_is_replaced(serve, tiny_file, tmp_path):
    sock = tmp_path / "s2rt.sock"
    d = serve(str(tiny_file), "--uds", str(sock))
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert d.client.get("/v1/health/ready").json()["ready"] is True
    d.kill()  # leaves the socket file behind
    assert sock.exists()
    again = serve(str(tiny_file), "--uds", str(sock))
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert again.client.get("/v1/model").status_code == 200
    assert again.stop() == 0 and not sock.exists()


def test_tokens_are_required_once_configured(serve, tiny_file, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# daemon tokens\n{TOKEN}\nsecond-token-abcdefghijklmnop\n")
    tokens.chmod(0o600)
    d = serve(str(tiny_file), "--token-file", str(tokens))
    with httpx.Client(base_url=d.url) as anonymous:
        assert anonymous.get("/v1/health/live").status_code == 200
        assert anonymous.get("/v1/health/ready").status_code == 200
        refused = anonymous.get("/v1/model")
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"] == "unauthorized"
        assert anonymous.get("/v1/model", headers={"authorization": f"Bearer {TOKEN}x"}).status_code == 401
        assert anonymous.get("/v1/model", headers={"authorization": f"Basic {TOKEN}"}).status_code == 401
        assert anonymous.post("/v1/predict", json={"x": [0.0] * 6}).status_code == 401
        for good in (TOKEN, "second-token-abcdefghijklmnop"):
            assert anonymous.get("/v1/model", headers={"authorization": f"Bearer {good}"}).status_code == 200
        ok = anonymous.post("/v1/predict", json={"x": [0.0] * 6}, headers={"authorization": f"bearer {TOKEN}"})
        assert ok.status_code == 200


def test_non_loopback_address_without_token_is_refused(tiny_file, tmp_path):
    out = run_serve(str(tiny_file), "--state-dir", str(tmp_path / "s"), "--host", "0.0.0.0")
    assert out.returncode == 1
    assert "not a loopback address" in out.stderr and "--token-file" in out.stderr


def test_weak_token_and_busy_state_dir_are_refused(serve, tiny_file, tmp_path):
    weak = tmp_path / "weak"
    weak.write_text("short\n")
    out = run_serve(str(tiny_file), "--state-dir", str(tmp_path / "s"), "--token-file", str(weak))
    assert out.returncode == 1 and "at least 16 characters" in out.stderr
    serve(str(tiny_file), state=tmp_path / "busy")
    out = run_serve(str(tiny_file), "--state-dir", str(tmp_path / "busy"), "--port", "0")
    assert out.returncode == 1 and "another s2rt serve is using this state directory" in out.stderr
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("keep me")
    out = run_serve(str(tiny_file), "--state-dir", str(tmp_path / "s2"), "--uds", str(not_a_socket))
    assert out.returncode == 1 and "not a socket" in out.stderr and not_a_socket.read_text() == "keep me"


LOOPBACK = [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("localhost", True)]
OTHERS = [("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.com", False)]


@pytest.mark.parametrize(("host", "loopback"), LOOPBACK + OTHERS)
def test_loopback_detection(host, loopback):
    assert is_loopback(host) is loopback
    if loopback:
        check_host(host, ())
    else:
        check_host(host, (b"a-token-of-enough-length",))
        with pytest.raises(Exception, match="not a loopback address"):
            check_host(host, ())
