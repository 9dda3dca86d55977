"""The daemon's state files are 0600 whatever the umask and whatever the mode of a
--state-dir that existed before it started (the audit found 0644 files there)."""

from __future__ import annotations

import os
import stat

import numpy as np
from helpers.daemon import wait_job


def test_state_files_are_private_in_a_state_dir_made_beforehand(serve, tiny_file, tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    (state / "left_by_an_older_version").write_text("x")
    (state / "left_by_an_older_version").chmod(0o644)
    old = os.umask(0o022)  # the daemon inherits the usual umask
    try:
        daemon = serve(str(tiny_file), "--allow-unauthenticated-control", state=state)
    finally:
        os.umask(old)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)), rng.integers(0, 3, 40)
    assert daemon.client.post("/v1/samples", json={"x": x.tolist(), "y": y.tolist()}).status_code == 201
    job = daemon.client.post("/v1/jobs", json={"epochs": 2, "check_accuracy": False}).json()
    assert wait_job(daemon.client, job["id"])["state"] == "succeeded"
    files = [p for p in state.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(files) >= 4  # database, adapter version(s), stored bundle, cache …
    modes = {str(p.relative_to(state)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(0o600)}, modes
