"""Real `s2rt serve` processes on free loopback ports (or Unix sockets), driven with httpx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.daemon import Daemon
from helpers.tiny import tiny_bundle
from s2rt.bundle import write_bundle

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """serve(*args) starts a daemon (state dir and port chosen here unless given); all are stopped at the end."""
    started: list[Daemon] = []

    def start(*args: str, state: Path | None = None, port: bool = True, env: dict[str, str] | None = None) -> Daemon:
        full = [*args, "--state-dir", str(state or tmp_path / "state")]
        if port and "--uds" not in args and "--port" not in args:
            full += ["--port", "0"]
        daemon = Daemon(full, tmp_path / "daemon.log", env)
        started.append(daemon)
        return daemon

    yield start
    for d in started:
        d.kill()


@pytest.fixture(scope="session")
def har_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped HAR model, converted once for the whole serve test session."""
    from s2conv import ConvertOptions, convert

    labels = tuple((MODELS / "data" / "har_labels.txt").read_text().split())
    path = tmp_path_factory.mktemp("har") / "har.s2l"
    write_bundle(convert(MODELS / "har_mlp.onnx", ConvertOptions(labels=labels)), path)
    return path


@pytest.fixture(scope="session")
def har_data() -> tuple[np.ndarray, np.ndarray]:
    with np.load(MODELS / "data" / "har_ft.npz") as d:
        return d["x"].astype(np.float32), d["y"].astype(np.int64)


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.s2l"
    write_bundle(tiny_bundle(), path)
    return path
