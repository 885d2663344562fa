from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policies.decisions import SignedRequest, TrainingRequest, evaluate_training, sign_request
from policies.documents import InstitutionPolicy, load_policy
from policies.signing import load_private_key

from .conftest import EXAMPLES, KEYS

TODAY = dt.date(2026, 11, 28)
FEATURES = (("monthly_revenue", "operations"), ("tax_compliance_rate", "credit"), ("industry", "scenario"))


@pytest.fixture(scope="module")
def policy() -> InstitutionPolicy:
    p = load_policy(EXAMPLES / "national_bank.toml")
    assert isinstance(p, InstitutionPolicy)
    return p


@pytest.fixture(scope="module")
def coordinator() -> Ed25519PrivateKey:
    return load_private_key(KEYS / "demo_coordinator.key")


def _request(**changes: object) -> TrainingRequest:
    base = TrainingRequest(
        run_id="run-1",
        purpose="credit_underwriting",
        schema="sme",
        schema_version="1.0.0",
        features=FEATURES,
        strategy="fedavg",
        rounds=10,
        min_institutions=3,
        secure_aggregation=False,
        issued_at="2026-11-28T10:00:00Z",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _decide(policy: InstitutionPolicy, key: Ed25519PrivateKey, records: int = 5000, **changes: object):
    return evaluate_training(policy, sign_request(_request(**changes), key), records, today=TODAY)


def test_permitted_request_names_its_permits(
    policy: InstitutionPolicy, coordinator: Ed25519PrivateKey
) -> None:
    d = _decide(policy, coordinator)
    assert d.allowed and d.effect == "permit"
    assert d.rules == ("permit.purpose_allowed", "permit.schema_allowed")
    assert (
        d.policy_id == "policy.national_bank" and d.policy_version == 1 and d.policy_sha256 == policy.sha256
    )
    assert len(d.input_sha256) == 64


@pytest.mark.parametrize(
    ("changes", "records", "rule", "reason"),
    [
        (
            {"purpose": "collections"},
            5000,
            "forbid.purpose_not_allowed",
            "purpose 'collections' is not among",
        ),
        (
            {"min_institutions": 2},
            5000,
            "forbid.too_few_institutions",
            "accepts rounds with 2 institution(s), policy requires at least 3",
        ),
        ({}, 10, "forbid.too_few_local_records", "10 local records, policy requires 1000"),
        (
            {"features": (*FEATURES, ("owner_gender", "behaviour"))},
            5000,
            "forbid.forbidden_feature",
            "forbidden feature(s) ['owner_gender']",
        ),
        ({"schema": "uci_homo"}, 5000, "forbid.schema_not_allowed", "schema 'uci_homo' is not among ['sme']"),
    ],
)
def test_forbids(
    policy: InstitutionPolicy,
    coordinator: Ed25519PrivateKey,
    changes: dict[str, object],
    records: int,
    rule: str,
    reason: str,
) -> None:
    d = _decide(policy, coordinator, records, **changes)
    assert not d.allowed
    assert rule in d.rules
    assert any(reason in r for r in d.reasons)
    assert reason in d.summary()


def test_secure_aggregation_required_but_off(
    policy: InstitutionPolicy, coordinator: Ed25519PrivateKey
) -> None:
    strict = replace(policy, require_secure_aggregation=True)
    d = _decide(strict, coordinator)
    assert d.rules == ("forbid.secure_aggregation_required",)
    assert _decide(strict, coordinator, secure_aggregation=True).allowed


def test_request_signed_by_unknown_coordinator(policy: InstitutionPolicy) -> None:
    d = _decide(policy, Ed25519PrivateKey.generate())
    assert d.rules == ("forbid.unknown_coordinator",)
    assert "not an accepted coordinator key" in d.reasons[0]


def test_request_altered_after_signing(policy: InstitutionPolicy, coordinator: Ed25519PrivateKey) -> None:
    signed = sign_request(_request(), coordinator)
    forged = SignedRequest(replace(signed.request, purpose="marketing"), signed.signed_by, signed.signature)
    d = evaluate_training(policy, forged, 5000, today=TODAY)
    assert "forbid.request_signature_invalid" in d.rules and "forbid.purpose_not_allowed" in d.rules


def test_forbid_overrides_permit(policy: InstitutionPolicy, coordinator: Ed25519PrivateKey) -> None:
    # the purpose is permitted, yet one forbid denies the whole request
    d = _decide(policy, coordinator, features=(*FEATURES, ("owner_age", "behaviour")))
    assert not d.allowed and d.rules == ("forbid.forbidden_feature",)


def test_epsilon_limit(policy: InstitutionPolicy, coordinator: Ed25519PrivateKey) -> None:
    limited = replace(policy, privacy=replace(policy.privacy, max_epsilon_per_run=3.0))
    assert _decide(limited, coordinator).rules == ("forbid.epsilon_above_run_limit",)
    assert _decide(limited, coordinator, epsilon=8.0).rules == ("forbid.epsilon_above_run_limit",)
    assert _decide(limited, coordinator, epsilon=3.0).allowed


def test_expired_policy_denies(policy: InstitutionPolicy, coordinator: Ed25519PrivateKey) -> None:
    d = evaluate_training(policy, sign_request(_request(), coordinator), 5000, today=dt.date(2028, 2, 1))
    assert d.rules == ("forbid.policy_not_in_force",)


def test_wire_round_trip(coordinator: Ed25519PrivateKey) -> None:
    signed = sign_request(_request(epsilon=3.0), coordinator)
    again = SignedRequest.from_wire(signed.to_wire())
    assert again == signed and again.signature_valid()
    with pytest.raises(ValueError, match="malformed training request"):
        SignedRequest.from_wire(b"{}")


def test_decision_input_digest_never_contains_data(
    policy: InstitutionPolicy, coordinator: Ed25519PrivateKey, tmp_path: Path
) -> None:
    d = _decide(policy, coordinator)
    assert d.input_sha256 == sign_request(_request(), coordinator).digest


def test_lifetime_budget(policy: InstitutionPolicy, coordinator: Ed25519PrivateKey) -> None:
    budgeted = replace(policy, privacy=replace(policy.privacy, lifetime_epsilon_budget=10.0))
    signed = sign_request(_request(epsilon=3.0), coordinator)
    assert evaluate_training(budgeted, signed, 5000, today=TODAY, epsilon_spent_elsewhere=6.0).allowed
    d = evaluate_training(budgeted, signed, 5000, today=TODAY, epsilon_spent_elsewhere=8.0)
    assert d.rules == ("forbid.lifetime_budget_exhausted",)
    assert "this run's epsilon 3.0 on top of 8 already spent exceeds the lifetime budget 10.0" in d.reasons[0]
    no_dp = evaluate_training(budgeted, sign_request(_request(), coordinator), 5000, today=TODAY)
    assert (
        no_dp.rules == ("forbid.lifetime_budget_exhausted",)
        and "without differential privacy" in no_dp.reasons[0]
    )
