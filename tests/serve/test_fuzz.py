"""The OpenAPI schema fuzzed with schemathesis against a real daemon: no request gets a 5xx,
and every answer is one the schema declares (status code, content type, body); the
schema's own examples are accepted.

Bounded for CI: a fixed number of examples per operation and mode, derandomized (the same
cases every run), no example database, a timeout per request.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from helpers.daemon import Daemon
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

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
            try:
                case.validate_response(response, checks=CHECKS)
            except FailureGroup as group:
                found = "; ".join(f.title for f in group.exceptions)
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code} {response.text[:200]}: {found}")

        try:
            call()
        except Unsatisfiable:  # nothing to break in this mode (e.g. no parameters to make invalid)
            assert mode == GenerationMode.NEGATIVE
    session.close()
    assert not failures, "\n".join(failures)
    assert daemon.client.get("/v1/health/ready").status_code == 200
    errors = [e for e in daemon.events() if e.get("level") == "error"]
    assert not errors, errors


def request_examples(schema: dict[str, Any]) -> list[tuple[str, str, Any]]:
    found = []
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            media = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            if "example" in media:
                found.append((method, path, media["example"]))
            found += [(method, path, e["value"]) for e in media.get("examples", {}).values()]
    return found


def test_the_schemas_own_examples_are_accepted(daemon):
    examples = request_examples(daemon.client.get("/v1/openapi.json").json())
    assert {(m, p) for m, p, _ in examples} >= {("post", "/v1/predict"), ("post", "/v1/samples"), ("post", "/v1/jobs")}
    for method, path, body in sorted(examples, key=lambda e: e[1] != "/v1/samples"):
        r = daemon.client.request(method, path, json=body)
        # 409 is the daemon's state (e.g. too few samples to train on), not a refusal of the request.
        assert r.status_code < 300 or r.status_code == 409, (method, path, body, r.text)


def test_the_schema_says_what_the_daemon_refuses(daemon):
    schema = daemon.client.get("/v1/openapi.json").json()
    components = schema["components"]["schemas"]
    assert components["PredictRequest"]["properties"]["x"]["minItems"] == 1
    assert components["SamplesRequest"]["properties"]["x"]["minItems"] == 1
    refused_together = {"properties": {"val_fraction": {"exclusiveMinimum": 0}}}
    assert refused_together in components["TrainRequest"]["anyOf"]
    for path, method in [("/v1/predict", "post"), ("/v1/bundle", "put"), ("/v1/samples", "post")]:
        declared = schema["paths"][path][method]["responses"]
        assert {"400", "413", "422"} <= set(declared), (path, sorted(declared))
    assert "507" in schema["paths"]["/v1/samples"]["post"]["responses"]
    assert "507" in schema["paths"]["/v1/bundle"]["put"]["responses"]
