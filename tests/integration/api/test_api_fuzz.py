"""Fuzz the REST API from its own OpenAPI document (schemathesis), with valid and invalid
requests: no 5xx, every response as documented. Bounded: a fixed number of examples per
operation and mode, no deadline per example.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from apikit import Api, running_api

EXAMPLES_PER_OPERATION = 20
BUILDER_EXAMPLES_PER_OPERATION = 6
"""Fewer for the builder: the same code runs, only the authorization answers differ."""
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_api(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str) -> Iterator[Api]:
    with running_api(
        tmp_path_factory,
        postgres_url,
        redis_url,
        "fuzz_farm",
        {"BUILDFARM_API_RATE_PER_MINUTE": "1000000"},
        redis_db=4,
    ) as started:
        yield started


def _fuzz(api: Api, token: str, examples: int) -> dict[str, int]:
    """Every operation but DELETE (revoking random token ids would soon revoke the fuzzer's own
    token) in both generation modes, ``examples`` each; returns requests sent per operation."""
    schema = schemathesis.openapi.from_url(f"{api.url}/api/v1/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    tried: dict[str, int] = {}
    runs = [(result.ok(), mode) for result in schema.get_all_operations() for mode in GenerationMode]
    for operation, mode in runs:
        if operation.method.upper() == "DELETE":
            continue
        label = f"{operation.method.upper()} {operation.path}"
        tried.setdefault(label, 0)

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def exercise(case: schemathesis.Case) -> None:
            tried[f"{case.method.upper()} {case.path}"] += 1
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            exercise()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, label  # nothing invalid to send (no inputs)
    assert len(tried) >= 15, tried  # the whole API was reached, not a subset
    assert all(count > 0 for count in tried.values()), tried
    return tried


def test_api_conforms_to_its_schema(fuzz_api: Api) -> None:
    """With the admin token, so every handler runs past authentication."""
    tried = _fuzz(fuzz_api, fuzz_api.admin, EXAMPLES_PER_OPERATION)
    print(f"fuzzed {len(tried)} operations, {sum(tried.values())} requests: {tried}")


def test_api_conforms_to_its_schema_for_a_builder(fuzz_api: Api) -> None:
    """With a builder's token (issue 11: a hostile user is a builder, not an admin): the refusals
    of admin routes and of other projects are documented answers, never a server error."""
    tried = _fuzz(fuzz_api, fuzz_api.user("mallory", "fuzzed", "builder"), BUILDER_EXAMPLES_PER_OPERATION)
    print(f"fuzzed {len(tried)} operations as a builder, {sum(tried.values())} requests: {tried}")
