"""No score leaves without its committed audit entry: a database that fails mid-request fails the request."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import select

from policies.audit import AuditEntry, create_audit_engine
from policies.query_log import QueryRecord
from tests.audit_db import session_on

from .conftest import body

SQLITE_TRIGGER = (
    "CREATE TRIGGER audit_down BEFORE INSERT ON audit_entry BEGIN SELECT RAISE(ABORT, 'disk failure'); END"
)
POSTGRES_TRIGGER = (
    "CREATE FUNCTION audit_down() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk failure'; END $$ "
    "LANGUAGE plpgsql",
    "CREATE TRIGGER audit_down BEFORE INSERT ON audit_entry FOR EACH ROW EXECUTE FUNCTION audit_down()",
)


def _break_audit_log(url: str) -> None:
    engine = create_audit_engine(url)
    with engine.begin() as conn:
        statements = (SQLITE_TRIGGER,) if engine.dialect.name == "sqlite" else POSTGRES_TRIGGER
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def _repair_audit_log(url: str) -> None:
    engine = create_audit_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text("DROP TRIGGER audit_down" + ("" if engine.dialect.name == "sqlite" else " ON audit_entry"))
        )
    engine.dispose()


def _served(url: str) -> tuple[set[int], set[int]]:
    with session_on(url) as session:
        entries = {e.seq for e in session.exec(select(AuditEntry)) if e.action.startswith("query.")}
        records = {r.audit_seq for r in session.exec(select(QueryRecord))}
    return entries, records


@pytest.mark.parametrize("route", ["/v1/scores", "/v1/decisions"])
def test_every_200_has_its_entry_and_a_failing_database_fails_the_request(start_service, route: str) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    headers = service.headers("national_bank")
    answered = []
    for _ in range(3):
        response = service.client.post(route, json=body(), headers=headers)
        assert response.status_code == 200
        answered.append(response.json()["audit_entry"])

    _break_audit_log(service.url)
    failed = service.client.post(route, json=body(), headers=headers)
    assert failed.status_code == 503, failed.text
    problem = failed.json()
    assert problem["type"].endswith("/audit-unavailable") and "nothing was scored" in problem["detail"]
    assert "probability_of_default" not in failed.text and "score" not in problem
    ready = service.client.get("/readyz")
    assert ready.status_code in (200, 503)

    _repair_audit_log(service.url)
    again = service.client.post(route, json=body(), headers=headers)
    assert again.status_code == 200
    answered.append(again.json()["audit_entry"])

    entries, records = _served(service.url)
    assert entries == set(answered) == records  # every answer has its entry and record; no more
    chain = service.client.get("/v1/audit/verify", headers=service.headers("consortium_auditor")).json()
    assert chain["intact"], chain
    assert chain["unsigned"] == 0  # the service signs the head after each batch


def test_the_chain_stays_intact_under_many_concurrent_queries(start_service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Group commit: many queries at once share transactions, and the chain is still one chain."""
    import concurrent.futures

    service = start_service()
    headers = service.headers("online_bank")

    def one(_: int) -> int:
        response = service.client.post("/v1/scores", json=body(), headers=headers)
        assert response.status_code == 200
        return int(response.json()["audit_entry"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        seqs = list(pool.map(one, range(40)))
    assert len(set(seqs)) == 40
    chain = service.client.get("/v1/audit/verify", headers=service.headers("consortium_auditor")).json()
    assert chain["intact"] and chain["unsigned"] == 0, chain
