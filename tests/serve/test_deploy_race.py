"""A request sees one bundle from start to end: samples ingested while bundles are deployed
are stored with labels that mean, under the stored signature, what the client sent."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import httpx
import numpy as np
from helpers.keys import test_key
from helpers.tiny import tiny_bundle, tiny_weights
from s2rt.bundle import write_bundle
from s2rt.serve.samples import signature

# Many classes and large batches make resolving label names (the window between reading the
# served bundle and storing) long against the SQLite commit, so a deploy nearly always lands
# inside some request: before the fix about 3 deploys in 4 stored a whole batch wrongly.
INGESTERS, BATCH, DEPLOYS, CLASSES = 3, 2000, 6, 2048
KEY = test_key(1)


def test_samples_ingested_during_deploys_keep_their_labels(serve, tmp_path):
    forward = tiny_bundle(tiny_weights(classes=CLASSES))
    backward = dataclasses.replace(forward, labels=forward.labels[::-1])  # same input, labels in reverse order
    files = [tmp_path / "forward.s2l", tmp_path / "backward.s2l"]
    for bundle, path in zip((forward, backward), files):
        write_bundle(bundle, path, KEY)
    KEY.save(tmp_path / "owner")
    labels_of = {signature(b): b.labels for b in (forward, backward)}
    sock = tmp_path / "s.sock"
    d = serve(str(files[0]), "--uds", str(sock), "--trusted-key", str(tmp_path / "owner.pub"), "--cache-capacity", "64")
    uploads = [f.read_bytes() for f in files]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 6)).astype(np.float32).tolist()
    done = threading.Event()

    def ingest(k: int) -> list[tuple[int, str]]:
        sent: list[tuple[int, str]] = []
        names = [forward.labels[(i + k) % len(forward.labels)] for i in range(BATCH)]
        with httpx.Client(base_url=d.url, transport=httpx.HTTPTransport(uds=str(sock)), timeout=30) as h:
            while not done.is_set():
                got = h.post("/v1/samples", json={"x": x, "y": names})
                assert got.status_code == 201, got.text
                sent += zip(got.json()["ids"], names)
        return sent

    def deploy() -> None:
        with httpx.Client(base_url=d.url, transport=httpx.HTTPTransport(uds=str(sock)), timeout=30) as h:
            try:
                time.sleep(0.2)  # the ingesters are under way
                for n in range(1, DEPLOYS + 1):
                    got = h.put("/v1/bundle", content=uploads[n % 2])
                    assert got.status_code == 200 and got.json()["changed"], got.text
            finally:
                done.set()

    with ThreadPoolExecutor(INGESTERS + 1) as pool:
        deployer = pool.submit(deploy)
        sent = [s for part in pool.map(ingest, range(INGESTERS)) for s in part]
        deployer.result()
    assert d.stop() == 0
    with closing(sqlite3.connect(tmp_path / "state" / "samples.sqlite")) as db:
        stored = {i: (sig, label) for i, sig, label in db.execute("SELECT id, signature, label FROM samples")}
    wrong = [i for i, name in sent if labels_of[stored[i][0]][stored[i][1]] != name]
    assert {sig for sig, _ in stored.values()} == set(labels_of), "expected samples stored under both bundles' signatures"
    assert not wrong, f"{len(wrong)} of {len(sent)} acknowledged samples stored with another label ({DEPLOYS} deploys)"
