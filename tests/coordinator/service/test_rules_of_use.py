"""Tokens, roles, purposes, consent and rate limits, as the federation policy says; refusals as RFC 9457."""

from __future__ import annotations

import time

from sqlmodel import select

from coordinator.service.problems import PROBLEM_JSON
from policies.audit import AuditEntry
from policies.member_keys import revoke, tokens
from tests.audit_db import session_on

from .conftest import COUPLE, body, write_policy


def _problem(response, status: int, slug: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["status"] == status and problem["type"].endswith("/" + slug), problem
    assert problem["detail"] and problem["title"]
    return problem


def _query_entries(url: str) -> list[AuditEntry]:
    with session_on(url) as session:
        return list(session.exec(select(AuditEntry).where(AuditEntry.action.startswith("query."))))  # type: ignore[attr-defined]


def test_no_token_a_bad_token_and_a_revoked_token_get_401(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    missing = service.client.post("/v1/scores", json=body())
    assert _problem(missing, 401, "no-token") and missing.headers["www-authenticate"].startswith("Bearer")
    forged = service.client.post(
        "/v1/scores", json=body(), headers={"Authorization": "Bearer fck_0123456789abcdef_" + "x" * 43}
    )
    _problem(forged, 401, "bad-token")
    assert (
        service.client.post("/v1/scores", json=body(), headers=service.headers("online_bank")).status_code
        == 200
    )
    with session_on(service.url) as session:
        key = next(t for t in tokens(session) if t.member == "online_bank")
        revoke(session, key.key_id, actor="test")
        session.commit()
    revoked = service.client.post("/v1/scores", json=body(), headers=service.headers("online_bank"))
    _problem(revoked, 401, "bad-token")
    assert len(_query_entries(service.url)) == 1  # only the one query that was answered


def test_each_role_does_only_its_own_work(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    _problem(
        service.client.post("/v1/scores", json=body(), headers=service.headers("consortium_auditor")),
        403,
        "wrong-role",
    )
    _problem(
        service.client.post("/v1/decisions", json=body(), headers=service.headers("coordinator")),
        403,
        "wrong-role",
    )
    _problem(
        service.client.get("/v1/audit/entries", headers=service.headers("national_bank")), 403, "wrong-role"
    )
    _problem(
        service.client.post("/v1/models/rollback", headers=service.headers("national_bank")),
        403,
        "wrong-role",
    )
    assert (
        service.client.get("/v1/audit/entries", headers=service.headers("consortium_auditor")).status_code
        == 200
    )
    assert (
        service.client.get("/v1/policies", headers=service.headers("consortium_auditor")).status_code == 200
    )
    assert _query_entries(service.url) == []


def test_a_member_reads_only_its_own_query_history(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    for member in ("national_bank", "online_bank", "online_bank"):
        assert (
            service.client.post("/v1/scores", json=body(), headers=service.headers(member)).status_code == 200
        )
    own = service.client.get("/v1/queries", headers=service.headers("online_bank")).json()["queries"]
    assert [q["member"] for q in own] == ["online_bank", "online_bank"]
    _problem(
        service.client.get(
            "/v1/queries", params={"member": "national_bank"}, headers=service.headers("online_bank")
        ),
        403,
        "not-your-history",
    )
    everyone = service.client.get("/v1/queries", headers=service.headers("consortium_auditor")).json()[
        "queries"
    ]
    assert sorted(q["member"] for q in everyone) == ["national_bank", "online_bank", "online_bank"]
    trail = service.client.get(
        "/v1/audit/entries", params={"member": "national_bank"}, headers=service.headers("consortium_auditor")
    ).json()["entries"]
    assert [e["actor"] for e in trail] == ["member:national_bank"]
    assert trail[0]["detail"]["purpose"] == "credit_underwriting"


def test_purposes_and_consent_follow_the_policy(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    _problem(
        service.client.post(
            "/v1/scores", json=body(purpose="collections"), headers=service.headers("national_bank")
        ),
        403,
        "purpose-not-allowed",
    )
    # city_bank_east may score for underwriting only (scoring.purposes_by_member)
    _problem(
        service.client.post(
            "/v1/scores", json=body(purpose="risk_monitoring"), headers=service.headers("city_bank_east")
        ),
        403,
        "purpose-not-allowed",
    )
    assert (
        service.client.post("/v1/scores", json=body(), headers=service.headers("city_bank_east")).status_code
        == 200
    )
    _problem(
        service.client.post("/v1/scores", json=body(consent=None), headers=service.headers("national_bank")),
        403,
        "consent-required",
    )
    marketing = service.client.post(
        "/v1/scores", json=body(purpose="marketing"), headers=service.headers("national_bank")
    )
    assert marketing.status_code in (403, 422)
    assert len(_query_entries(service.url)) == 1


def test_consent_is_optional_where_the_policy_says_so(start_service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    service = start_service(write_policy(tmp_path, require_consent_reference="false"))
    answer = service.client.post(
        "/v1/scores", json=body(consent=None), headers=service.headers("national_bank")
    )
    assert answer.status_code == 200, answer.text


def test_the_rate_limit_answers_429_with_retry_after(start_service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    service = start_service(write_policy(tmp_path, requests_per_minute="3"))
    codes = [
        service.client.post("/v1/scores", json=body(), headers=service.headers("national_bank"))
        for _ in range(4)
    ]
    assert [c.status_code for c in codes[:3]] == [200, 200, 200]
    problem = _problem(codes[3], 429, "rate-limited")
    assert "3 requests a minute" in problem["detail"]
    assert int(codes[3].headers["retry-after"]) >= 1
    # the limit is per member: another member is not held back
    assert (
        service.client.post("/v1/scores", json=body(), headers=service.headers("online_bank")).status_code
        == 200
    )
    assert len(_query_entries(service.url)) == 4


def test_bad_input_lists_every_bad_field(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    bad = {**COUPLE, "monthly_revenue": -5, "industry": "casino", "has_collateral": 2, "surprise": 1}
    del bad["open_loans"]
    problem = _problem(
        service.client.post("/v1/scores", json=body(bad), headers=service.headers("national_bank")),
        422,
        "invalid-input",
    )
    fields = {e["field"] for e in problem["errors"]}
    assert fields == {
        "applicant.monthly_revenue",
        "applicant.industry",
        "applicant.has_collateral",
        "applicant.surprise",
        "applicant.open_loans",
    }
    assert "casino" not in str(problem)
    assert _query_entries(service.url) == []


def test_too_large_a_payload_is_413(start_service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    service = start_service(write_policy(tmp_path), max_body_bytes=20_000)
    applicants = [{**COUPLE, "business_id": f"b{i}"} for i in range(100)]
    response = service.client.post(
        "/v1/scores/batch",
        json={"purpose": "credit_underwriting", "consent_reference": "c", "applicants": applicants},
        headers=service.headers("national_bank"),
    )
    _problem(response, 413, "payload-too-large")
    metrics = service.client.get("/metrics").text
    assert 'fedcredit_refusals_total{reason="payload-too-large"} 1' in metrics


def test_a_revoked_token_stops_within_the_cache_time(start_service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    service = start_service(write_policy(tmp_path), key_cache_seconds=0.5)
    assert (
        service.client.post("/v1/scores", json=body(), headers=service.headers("national_bank")).status_code
        == 200
    )
    with session_on(service.url) as session:
        key = next(t for t in tokens(session) if t.member == "national_bank")
        revoke(session, key.key_id, actor="test")
        session.commit()
    time.sleep(0.6)
    _problem(
        service.client.post("/v1/scores", json=body(), headers=service.headers("national_bank")),
        401,
        "bad-token",
    )


def test_no_score_outside_the_policy_dates(start_service, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The service checks the federation policy's dates on every query, in local time: from the first
    moment of ``effective`` to the last of ``expires``; outside them, 503 and nothing scored."""
    import datetime as dt
    from types import SimpleNamespace

    import coordinator.service.state as state_module

    service = start_service()
    header = service.client.app.state.service.policy.header

    def at(day: dt.date, hour: int, minute: int = 0, second: float = 0.0) -> None:
        moment = dt.datetime.combine(day, dt.time(hour, minute)).timestamp() + second
        monkeypatch.setattr(
            state_module, "time", SimpleNamespace(time=lambda: moment, monotonic=time.monotonic)
        )

    def score() -> int:
        return service.client.post(
            "/v1/scores", json=body(), headers=service.headers("national_bank")
        ).status_code

    at(header.effective, 0)
    assert score() == 200
    at(header.expires, 23, 59, 59.999)
    assert score() == 200
    at(header.expires + dt.timedelta(days=1), 0)
    _problem(
        service.client.post("/v1/scores", json=body(), headers=service.headers("national_bank")),
        503,
        "policy-not-in-force",
    )
    at(header.effective - dt.timedelta(days=1), 23, 59, 59.999)
    assert score() == 503
    assert len(_query_entries(service.url)) == 2
