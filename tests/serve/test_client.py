"""`s2rt client` against a real daemon on a Unix socket: every endpoint from the command line.

The client runs in-process (`s2rt.cli.main`); the daemon is a real process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from helpers.daemon import ROOT
from s2rt.cli import main


def test_client_drives_every_endpoint(serve, har_bundle, har_data, tmp_path, capsys):
    x, y = har_data
    sock = tmp_path / "s.sock"
    serve(str(har_bundle), "--uds", str(sock), "--allow-unsigned-deploy")
    np.savez(tmp_path / "ft.npz", x=x[:300], y=y[:300])
    np.savez(tmp_path / "new.npz", x=x[300:310])

    def client(*args: str, ok: bool = True) -> str:
        capsys.readouterr()
        code = main(["client", "--uds", str(sock), *args])
        out = capsys.readouterr()
        assert (code == 0) is ok, out.err
        return out.out if ok else out.err

    assert json.loads(client("ready"))["ready"] is True
    assert json.loads(client("ingest", "--data", str(tmp_path / "ft.npz"), "--batch", "128"))["count"] == 300
    assert json.loads(client("samples", "--limit", "5"))["count"] == 300
    job = json.loads(client("train", "--epochs", "5", "--no-check", "--wait"))
    assert job["state"] == "succeeded" and job["result"]["version"] == 1
    predicted = json.loads(client("predict", "--data", str(tmp_path / "new.npz"), "--npy"))
    assert predicted["adapter_version"] == 1 and len(predicted["classes"]) == 10
    assert json.loads(client("predict", "--data", str(tmp_path / "new.npz")))["classes"] == predicted["classes"]
    client("download", "1", "-o", str(tmp_path / "v1.npz"))
    assert (tmp_path / "v1.npz").stat().st_size > 0
    assert json.loads(client("rollback")) == {"active": 0}
    assert json.loads(client("activate", "1")) == {"active": 1}
    assert json.loads(client("adapters"))["active"] == 1
    assert json.loads(client("version", "1"))["loadable"] is True
    assert json.loads(client("job", str(job["id"])))["state"] == "succeeded"
    assert json.loads(client("jobs"))["jobs"][0]["id"] == job["id"]
    assert "s2rt_predictions_total 20" in client("metrics")
    client("bundle", "-o", str(tmp_path / "b.s2l"))
    assert (tmp_path / "b.s2l").read_bytes() == har_bundle.read_bytes()
    assert json.loads(client("deploy", str(tmp_path / "b.s2l")))["changed"] is False
    assert "404" in client("activate", "9", ok=False) and "does not exist" in client("job", "77", ok=False)
    assert json.loads(client("sample", "1"))["y"] == int(y[0])
    assert json.loads(client("model"))["input"]["shape"] == [48]
    assert json.loads(client("live")) == {"status": "ok"}
    job = json.loads(client("train", "--epochs", "10000"))
    assert json.loads(client("cancel", str(job["id"])))["id"] == job["id"]
    assert "cannot reach the daemon" in main_error(["client", "--uds", str(tmp_path / "nothing.sock"), "ready"], capsys)


def main_error(argv: list[str], capsys) -> str:
    assert main(argv) == 1
    return capsys.readouterr().err


PROBE = """
import sys
from s2rt.cli import main
try:
    main(["--version"])
except SystemExit:
    pass
print(sorted(m for m in sys.modules if m.split(".")[0] in ("fastapi", "uvicorn", "starlette", "pydantic")))
"""


def test_the_other_commands_do_not_import_the_web_stack():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.splitlines()[-1] == "[]"
