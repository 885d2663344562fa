"""Schemathesis against the service's own OpenAPI document: no 5xx, no response that breaks the schema.

Bounded: a fixed number of generated requests per operation, on SQLite and on PostgreSQL. Each
operation is driven with Hypothesis directly (Schemathesis' pytest plugin does not load on this
pytest).
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES_PER_OPERATION = 8
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


def test_no_5xx_and_every_response_matches_the_document(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    schema = schemathesis.openapi.from_asgi("/openapi.json", service.client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /v1/scores",
        "POST /v1/scores/batch",
        "POST /v1/decisions",
        "GET /v1/models",
        "GET /v1/audit/entries",
        "GET /readyz",
    }
    tried: dict[str, set[int]] = {}
    for who in ("national_bank", "consortium_auditor"):
        for operation in operations:
            _fuzz(operation, service.headers(who), tried)
    assert 200 in tried["GET /v1/models"] and 200 in tried["GET /v1/audit/entries"]
    assert tried["POST /v1/scores"] & {200, 422}


def _fuzz(operation, headers: dict[str, str], tried: dict[str, set[int]]) -> None:  # type: ignore[no-untyped-def]
    """A bounded number of generated requests to one operation, every response checked."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        tried.setdefault(operation.label, set()).add(response.status_code)

    check()
