"""The OpenAPI schema fuzzed with schemathesis against a real daemon: no request gets a 5xx.

Bounded for CI: a fixed number of examples per operation and mode, derandomized (the same
cases every run), no example database.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from helpers.daemon import Daemon
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

EXAMPLES_PER_OPERATION = 8


@pytest.fixture(scope="module")
def daemon(tiny_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    lab = ["--allow-unauthenticated-control", "--allow-unsigned-deploy"]  # so the control endpoints are fuzzed too
    d = Daemon([str(tiny_file), *lab, "--state-dir", str(root / "state"), "--port", "0"], root / "daemon.log")
    yield d
    assert d.stop() == 0


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_never_get_a_5xx(daemon, mode):
    schema = schemathesis.openapi.from_url(f"{daemon.url}/v1/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    session = requests.Session()

    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: schemathesis.Case) -> None:
            response = case.call(base_url=daemon.url, session=session, timeout=30)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")

        try:
            call()
        except Unsatisfiable:  # nothing to break in this mode (e.g. no parameters to make invalid)
            assert mode == GenerationMode.NEGATIVE
    session.close()
    assert not failures, "\n".join(failures)
    assert daemon.client.get("/v1/health/ready").status_code == 200
    errors = [e for e in daemon.events() if e.get("level") == "error"]
    assert not errors, errors
