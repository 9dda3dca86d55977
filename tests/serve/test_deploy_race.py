"""A request sees one bundle from start to end: samples ingested while bundles are deployed
are stored with labels that mean, under the stored signature, what the client sent."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from helpers.keys import test_key
from helpers.tiny import tiny_bundle
from s2rt.bundle import write_bundle
from s2rt.serve.samples import signature

INGESTERS, BATCH, SECONDS = 3, 200, 3.0
KEY = test_key(1)


def test_samples_ingested_during_deploys_keep_their_labels(serve, tmp_path):
    forward = tiny_bundle()
    backward = dataclasses.replace(forward, labels=forward.labels[::-1])  # same input, labels in reverse order
    files = [tmp_path / "forward.s2l", tmp_path / "backward.s2l"]
    for bundle, path in zip((forward, backward), files):
        write_bundle(bundle, path, KEY)
    KEY.save(tmp_path / "owner")
    labels_of = {signature(b): b.labels for b in (forward, backward)}
    sock = tmp_path / "s.sock"
    d = serve(str(files[0]), "--uds", str(sock), "--trusted-key", str(tmp_path / "owner.pub"))
    uploads = [f.read_bytes() for f in files]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 6)).astype(np.float32).tolist()
    stop = time.monotonic() + SECONDS
    done = threading.Event()

    def ingest(k: int) -> list[tuple[int, str]]:
        sent: list[tuple[int, str]] = []
        names = [forward.labels[(i + k) % len(forward.labels)] for i in range(BATCH)]
        with httpx.Client(base_url=d.url, transport=httpx.HTTPTransport(uds=str(sock)), timeout=30) as h:
            while time.monotonic() < stop:
                got = h.post("/v1/samples", json={"x": x, "y": names})
                assert got.status_code == 201, got.text
                sent += zip(got.json()["ids"], names)
        return sent

    def deploy() -> int:
        n = 0
        with httpx.Client(base_url=d.url, transport=httpx.HTTPTransport(uds=str(sock)), timeout=30) as h:
            while not done.is_set():
                n += 1
                got = h.put("/v1/bundle", content=uploads[n % 2])
                assert got.status_code == 200 and got.json()["changed"], got.text
        return n

    with ThreadPoolExecutor(INGESTERS + 1) as pool:
        deployer = pool.submit(deploy)
        sent = [s for part in pool.map(ingest, range(INGESTERS)) for s in part]
        done.set()
        deploys = deployer.result()
    assert d.stop() == 0
    with sqlite3.connect(tmp_path / "state" / "samples.sqlite") as db:
        stored = {i: (sig, label) for i, sig, label in db.execute("SELECT id, signature, label FROM samples")}
    wrong = [i for i, name in sent if labels_of[stored[i][0]][stored[i][1]] != name]
    assert deploys > 4 and len(sent) >= BATCH * INGESTERS
    assert not wrong, f"{len(wrong)} of {len(sent)} acknowledged samples stored with another label ({deploys} deploys)"
