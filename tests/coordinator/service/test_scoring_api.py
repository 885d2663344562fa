"""Members score and decide over HTTP; every answer names its model and policy and has its audit entry."""

from __future__ import annotations

import hashlib
import json
import math

from sqlmodel import select

from policies.audit import AuditEntry
from policies.query_log import QueryRecord
from tests.audit_db import session_on

from .conftest import COUPLE, FEDERATION, body


def test_a_member_scores_the_couple_and_the_query_is_on_record(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    response = service.client.post("/v1/scores", json=body(), headers=service.headers("national_bank"))
    assert response.status_code == 200, response.text
    answer = response.json()
    score = answer["score"]
    assert answer["federation"] == FEDERATION and answer["model"]["version"] == "v1"
    assert len(answer["federation_policy_sha256"]) == 64
    assert 0 < score["probability_of_default"] < 1 and score["grade"] in "ABCDE"
    total = sum(score["contributions"].values())
    assert math.isclose(total, score["logit"] - score["baseline"], abs_tol=1e-5)
    assert 1 <= len(score["reasons"]) <= 4
    weights = [abs(r["effect"]) for r in score["reasons"]]
    assert weights == sorted(weights, reverse=True)
    with session_on(service.url) as session:
        entry = session.exec(select(AuditEntry).where(AuditEntry.seq == answer["audit_entry"])).one()
        record = session.exec(select(QueryRecord).where(QueryRecord.audit_seq == entry.seq)).one()
    assert entry.actor == "member:national_bank" and entry.action == "query.score"
    assert "grocery" not in entry.detail and "52000" not in entry.detail  # digests, never the input
    detail = json.loads(entry.detail)
    # the chain keeps the consent reference's digest; the readable record (pruned) keeps it in clear
    assert "consent-1" not in entry.detail
    assert detail["consent_sha256"] == hashlib.sha256(b"consent-1").hexdigest()
    assert record.purpose == "credit_underwriting" and record.consent_reference == "consent-1"
    assert record.input_sha256 == entry.input_sha256 and len(entry.input_sha256) == 64


def test_a_batch_is_scored_in_one_audited_query(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    applicants = [{**COUPLE, "business_id": f"b{i}", "cashflow_volatility": 0.1 * i} for i in range(25)]
    response = service.client.post(
        "/v1/scores/batch",
        json={"purpose": "risk_monitoring", "consent_reference": "c", "applicants": applicants},
        headers=service.headers("online_bank"),
    )
    assert response.status_code == 200, response.text
    scores = response.json()["scores"]
    assert [s["id"] for s in scores] == [f"b{i}" for i in range(25)]
    single = service.client.post(
        "/v1/scores", json=body(applicants[7]), headers=service.headers("online_bank")
    ).json()["score"]
    assert math.isclose(single["logit"], scores[7]["logit"], abs_tol=1e-6)


def test_a_decision_follows_the_policy_cut_offs(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    good = service.client.post("/v1/decisions", json=body(), headers=service.headers("national_bank")).json()
    risky_applicant = {
        **COUPLE,
        "bureau_delinquencies_24m": 12,
        "credit_utilization": 1.9,
        "tax_compliance_rate": 0.1,
        "utility_ontime_rate": 0.1,
        "cashflow_volatility": 5.0,
        "settlement_regularity": 0.1,
    }
    risky = service.client.post(
        "/v1/decisions", json=body(risky_applicant), headers=service.headers("national_bank")
    ).json()
    for answer in (good, risky):
        pd_ = answer["score"]["probability_of_default"]
        expected = "approve" if pd_ < 0.03 else "decline" if pd_ >= 0.10 else "refer"
        assert answer["decision"] == expected
    assert good["score"]["probability_of_default"] < risky["score"]["probability_of_default"]
    assert risky["decision"] in ("refer", "decline") and risky["adverse_reasons"]
    assert all(r["direction"] == "raises_risk" for r in risky["adverse_reasons"])
    if good["decision"] == "approve":
        assert good["suggested_limit"] == 100000 and good["adverse_reasons"] == []
        nothing = service.client.post(
            "/v1/decisions",
            json=body({**COUPLE, "requested_amount": 0}),
            headers=service.headers("national_bank"),
        ).json()
        assert nothing["suggested_limit"] == 0  # an amount of 0 is not "no amount": never the cap


def test_scoring_routes_are_served_directly_and_keep_their_metrics_and_errors(start_service) -> None:  # type: ignore[no-untyped-def]
    """The scoring routes skip FastAPI's route handling: requests are still counted under their
    route, other methods are refused as problems, and the OpenAPI document still describes them."""
    service = start_service()
    headers = service.headers("national_bank")
    assert service.client.post("/v1/scores", json=body(), headers=headers).status_code == 200
    assert service.client.post("/v1/decisions", json=body(), headers=headers).status_code == 200
    wrong = service.client.get("/v1/scores", headers=headers)
    assert wrong.status_code == 405 and wrong.headers["content-type"] == "application/problem+json"
    assert wrong.headers["allow"] == "POST"
    metrics = service.client.get("/metrics").text
    assert 'fedcredit_requests_total{method="POST",route="/v1/scores",status="200"} 1' in metrics
    assert 'fedcredit_requests_total{method="POST",route="/v1/decisions",status="200"} 1' in metrics
    paths = service.client.get("/openapi.json").json()["paths"]
    for path in ("/v1/scores", "/v1/scores/batch", "/v1/decisions"):
        assert set(paths[path]) == {"post"} and paths[path]["post"]["security"]
    # FastAPI's routes for them are there for the document only: without them, scores still come
    routes = service.client.app.router.routes
    kept = list(routes)
    scoring = ("/v1/scores", "/v1/scores/batch", "/v1/decisions")
    routes[:] = [r for r in routes if getattr(r, "path", None) not in scoring]
    try:
        assert service.client.post("/v1/scores", json=body(), headers=headers).status_code == 200
        refused = service.client.post(
            "/v1/scores", json=body(), headers=service.headers("consortium_auditor")
        )
        assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"
    finally:
        routes[:] = kept
    # and the other way round: with the direct routes gone (as behind a root path), FastAPI's own
    # routes give the same answers
    (direct,) = [m.kwargs["direct"] for m in service.client.app.user_middleware if "direct" in m.kwargs]
    answers = dict(direct.routes)
    direct.routes.clear()
    try:
        scored = service.client.post("/v1/scores", json=body(), headers=headers)
        assert scored.status_code == 200 and scored.json()["audit_entry"] > 0
        refused = service.client.post(
            "/v1/decisions", json=body(), headers=service.headers("consortium_auditor")
        )
        assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"
    finally:
        direct.routes.update(answers)
