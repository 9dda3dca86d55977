"""A full disk is answered 507 with a message that says so, and the daemon carries on once
there is space again (the audit: a vague 500).

The disk is filled from outside the daemon's code: a `sitecustomize` on the daemon's
PYTHONPATH, only in this test, makes the process's `os.fsync` fail with ENOSPC (where a
full disk surfaces for a write that the page cache took) while the flag file FULL/files
exists, and caps its SQLite databases at their current size with `PRAGMA max_page_count`
(SQLite then answers SQLITE_FULL, its code for a full disk) while FULL/sqlite exists.
The daemon's own code runs unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.daemon import ROOT, wait_job
from s2rt.bundle import read_bundle

SITECUSTOMIZE = """
import errno, os, sqlite3

_FULL = os.environ["S2RT_TEST_DISK_FULL"]
_fsync, _connect = os.fsync, sqlite3.connect


def fsync(fd):
    if os.path.exists(os.path.join(_FULL, "files")):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _fsync(fd)


class FillingConnection(sqlite3.Connection):
    full = False

    def execute(self, *args):
        full = os.path.exists(os.path.join(_FULL, "sqlite"))
        if full != self.full:
            self.full = full
            super().execute("PRAGMA max_page_count = %d" % (1 if full else 1073741823))
        return super().execute(*args)


def connect(*args, **kwargs):
    return _connect(*args, factory=FillingConnection, **kwargs)


os.fsync, sqlite3.connect = fsync, connect
"""


@pytest.fixture
def full_disk_daemon(serve, tiny_file, tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    full = tmp_path / "full"
    full.mkdir()
    env = {"PYTHONPATH": f"{hooks}:{ROOT / 'runtime'}", "S2RT_TEST_DISK_FULL": str(full)}
    lab = ["--allow-unauthenticated-control", "--allow-unsigned-deploy"]  # control and unsigned uploads over loopback TCP
    return serve(str(tiny_file), *lab, env=env), full


def samples(n: int, seed: int = 0) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 6)).tolist(), "y": rng.integers(0, 3, n).tolist()}


def assert_disk_full(r) -> None:
    assert r.status_code == 507, r.text
    body = r.json()
    assert body["error"] == "insufficient_storage" and "disk" in body["message"] and "full" in body["message"], body


def test_samples_and_deploys_on_a_full_disk_get_507_and_nothing_changes(full_disk_daemon, har_bundle, tiny_file):
    d, full = full_disk_daemon
    c = d.client
    assert c.post("/v1/samples", json=samples(20)).status_code == 201
    (full / "sqlite").touch()
    (full / "files").touch()
    assert_disk_full(c.post("/v1/samples", json=samples(500, seed=1)))
    assert_disk_full(c.put("/v1/bundle", content=har_bundle.read_bytes()))
    assert c.get("/v1/model").json()["bundle_digest"] == read_bundle(tiny_file).digest
    assert c.get("/v1/samples").json()["count"] == 20
    assert c.post("/v1/predict", json={"x": [0.0] * 6}).status_code == 200
    (full / "sqlite").unlink()
    (full / "files").unlink()
    assert c.post("/v1/samples", json=samples(500, seed=1)).status_code == 201
    assert c.get("/v1/samples").json()["count"] == 520
    errors = [e for e in d.events() if e.get("level") == "error"]
    assert errors and all("full" in e["msg"] for e in errors), errors  # one clear line each, no traceback


def test_a_job_that_cannot_write_its_adapters_fails_saying_the_disk_is_full(full_disk_daemon):
    d, full = full_disk_daemon
    c = d.client
    assert c.post("/v1/samples", json=samples(60)).status_code == 201
    (full / "files").touch()  # the job's record still fits in the database; its adapter file does not
    job = c.post("/v1/jobs", json={"epochs": 3, "check_accuracy": False, "val_fraction": 0})
    assert job.status_code == 202, job.text
    done = wait_job(c, job.json()["id"])
    (full / "files").unlink()
    assert done["state"] == "failed" and "disk" in done["message"] and "full" in done["message"], done
    assert "internal error" not in done["message"]
    assert c.get("/v1/adapters").json()["active"] == 0
    assert c.post("/v1/adapters/rollback").status_code == 409
