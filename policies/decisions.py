"""Training requests signed by the coordinator, and the node's decision on them.

Deny by default: a request is permitted only when every permit rule holds and
no forbid rule fires; a forbid always overrides a permit. Each decision names
the rules that decided it, the policy (id, version, sha256), a digest of the
request (never data) and the time.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policies.documents import InstitutionPolicy
from policies.signing import canonical_json, key_id, public_key_text, sha256_hex, sign_bytes, verify_bytes


def _num(value: float | None) -> str | None:
    """Floats travel as text in canonical payloads, so their bytes never depend on formatting."""
    return None if value is None else repr(float(value))


def new_run_id() -> str:
    """A run id no node has seen: UTC time to the second plus 48 random bits."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(6)


@dataclass(frozen=True)
class TrainingRequest:
    """What the coordinator asks of every node for one run."""

    run_id: str
    purpose: str
    schema: str
    schema_version: str
    features: tuple[tuple[str, str], ...]  # (column, dimension)
    strategy: str
    rounds: int
    min_institutions: int
    secure_aggregation: bool
    epsilon: float | None = None  # None: no differential privacy
    delta: float = 1e-5
    issued_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def __post_init__(self) -> None:
        """Refuse what no node may act on: a signed request with an impossible value is still impossible."""
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"epsilon must be a finite number > 0 (or absent for no DP), got {self.epsilon}")
        if not (math.isfinite(self.delta) and 0 < self.delta < 1):
            raise ValueError(f"delta must be between 0 and 1 (exclusive), got {self.delta}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.min_institutions < 1:
            raise ValueError(f"min_institutions must be >= 1, got {self.min_institutions}")
        if not self.run_id.strip():
            raise ValueError("run_id must not be empty")
        issued_at(self)  # a parseable UTC time

    def payload(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["features"] = [list(f) for f in self.features]
        raw["epsilon"], raw["delta"] = _num(self.epsilon), _num(self.delta)
        return raw

    def canonical(self) -> bytes:
        return canonical_json(self.payload())

    @classmethod
    def from_payload(cls, raw: dict[str, Any]) -> TrainingRequest:
        return cls(
            run_id=str(raw["run_id"]),
            purpose=str(raw["purpose"]),
            schema=str(raw["schema"]),
            schema_version=str(raw["schema_version"]),
            features=tuple((str(n), str(d)) for n, d in raw["features"]),
            strategy=str(raw["strategy"]),
            rounds=int(raw["rounds"]),
            min_institutions=int(raw["min_institutions"]),
            secure_aggregation=_boolean(raw["secure_aggregation"]),
            epsilon=None if raw["epsilon"] is None else float(raw["epsilon"]),
            delta=float(raw["delta"]),
            issued_at=str(raw["issued_at"]),
        )


def issued_at(request: TrainingRequest) -> dt.datetime:
    try:
        return dt.datetime.strptime(request.issued_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(
            f"issued_at must be a UTC time YYYY-MM-DDTHH:MM:SSZ, got {request.issued_at!r}"
        ) from None


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"secure_aggregation must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class SignedRequest:
    request: TrainingRequest
    signed_by: str
    signature: str

    def to_wire(self) -> bytes:
        return canonical_json(
            {"request": self.request.payload(), "signed_by": self.signed_by, "signature": self.signature}
        )

    @classmethod
    def from_wire(cls, data: bytes) -> SignedRequest:
        try:
            raw = json.loads(data)
            return cls(
                TrainingRequest.from_payload(raw["request"]), str(raw["signed_by"]), str(raw["signature"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed training request: {exc}") from exc

    def signature_valid(self) -> bool:
        return verify_bytes(self.signed_by, self.request.canonical(), self.signature)

    @property
    def digest(self) -> str:
        return sha256_hex(self.request.canonical())


def sign_request(request: TrainingRequest, key: Ed25519PrivateKey) -> SignedRequest:
    return SignedRequest(request, public_key_text(key.public_key()), sign_bytes(key, request.canonical()))


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rules: tuple[str, ...]  # the rules that decided: permits when allowed, forbids when denied
    reasons: tuple[str, ...]
    policy_id: str
    policy_version: int
    policy_sha256: str
    input_sha256: str
    decided_at: str

    @property
    def effect(self) -> str:
        return "permit" if self.allowed else "deny"

    def summary(self) -> str:
        head = (
            f"{self.effect.upper()} under {self.policy_id} v{self.policy_version} ({self.policy_sha256[:12]})"
        )
        return head + ("" if self.allowed else ": " + "; ".join(self.reasons))


def evaluate_training(
    policy: InstitutionPolicy,
    signed: SignedRequest,
    local_records: int,
    today: dt.date | None = None,
    now: dt.datetime | None = None,
    epsilon_spent_elsewhere: float = 0.0,
) -> Decision:
    """Decide whether this node may train for ``signed``. Pure: no I/O, no clock unless not given.

    ``epsilon_spent_elsewhere`` is what earlier runs already spent of the lifetime budget.
    """
    today = today or dt.date.today()
    req = signed.request
    forbids: list[tuple[str, str]] = []
    permits: list[str] = []

    def forbid(rule: str, reason: str) -> None:
        forbids.append((rule, reason))

    if not policy.header.in_force(today):
        forbid(
            "forbid.policy_not_in_force",
            f"policy in force {policy.header.effective}..{policy.header.expires}, today is {today}",
        )
    if not signed.signature_valid():
        forbid("forbid.request_signature_invalid", "the training request's signature does not verify")
    if signed.signed_by not in policy.accepted_coordinator_keys:
        forbid(
            "forbid.unknown_coordinator",
            f"request signed by key {key_id(signed.signed_by)}, not an accepted coordinator key",
        )
    if req.purpose in policy.allowed_purposes:
        permits.append("permit.purpose_allowed")
    else:
        forbid(
            "forbid.purpose_not_allowed",
            f"purpose {req.purpose!r} is not among {list(policy.allowed_purposes)}",
        )
    if req.schema in policy.allowed_schemas:
        permits.append("permit.schema_allowed")
    else:
        forbid(
            "forbid.schema_not_allowed", f"schema {req.schema!r} is not among {list(policy.allowed_schemas)}"
        )
    names = [name for name, _ in req.features]
    forbidden = sorted(set(names) & set(policy.forbidden_features))
    if forbidden:
        forbid("forbid.forbidden_feature", f"request uses forbidden feature(s) {forbidden}")
    if "*" not in policy.allowed_features:
        extra = sorted(set(names) - set(policy.allowed_features))
        if extra:
            forbid("forbid.feature_not_allowed", f"feature(s) {extra} are not in allowed_features")
    dims = sorted({d for _, d in req.features} - set(policy.allowed_dimensions))
    if dims:
        forbid("forbid.dimension_not_allowed", f"dimension(s) {dims} are not allowed")
    if local_records < policy.min_local_records:
        forbid(
            "forbid.too_few_local_records",
            f"{local_records} local records, policy requires {policy.min_local_records}",
        )
    if req.rounds > policy.max_rounds_per_run:
        forbid(
            "forbid.too_many_rounds",
            f"the run announces {req.rounds} rounds, policy allows at most {policy.max_rounds_per_run}",
        )
    if policy.require_secure_aggregation and not req.secure_aggregation:
        forbid(
            "forbid.secure_aggregation_required",
            "policy requires secure aggregation; the run does not use it",
        )
    if req.min_institutions < policy.min_institutions_per_round:
        forbid(
            "forbid.too_few_institutions",
            f"run accepts rounds with {req.min_institutions} institution(s), policy requires at least {policy.min_institutions_per_round}",
        )
    budget = policy.privacy.lifetime_epsilon_budget
    if budget is not None:
        planned = math.inf if req.epsilon is None else req.epsilon
        if epsilon_spent_elsewhere + planned > budget:
            shown = (
                "a run without differential privacy"
                if req.epsilon is None
                else f"this run's epsilon {req.epsilon}"
            )
            forbid(
                "forbid.lifetime_budget_exhausted",
                f"{shown} on top of {epsilon_spent_elsewhere:.4g} already spent exceeds the lifetime budget {budget}",
            )
    limit = policy.privacy.max_epsilon_per_run
    if limit is not None:
        epsilon = math.inf if req.epsilon is None else req.epsilon
        if epsilon > limit:
            shown = "no differential privacy" if req.epsilon is None else f"epsilon {req.epsilon}"
            forbid(
                "forbid.epsilon_above_run_limit", f"{shown}; policy allows at most epsilon {limit} per run"
            )
    if not forbids and len(permits) < 2:
        forbid("deny.default", "no permit rule matched")
    allowed = not forbids
    return Decision(
        allowed=allowed,
        rules=tuple(permits) if allowed else tuple(rule for rule, _ in forbids),
        reasons=() if allowed else tuple(reason for _, reason in forbids),
        policy_id=policy.header.id,
        policy_version=policy.header.version,
        policy_sha256=policy.sha256,
        input_sha256=signed.digest,
        decided_at=(now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


REFUSAL_CONTEXT = "fedcredit refusal v1"  # see policies.identity.ATTESTATION_CONTEXT


@dataclass(frozen=True)
class Refusal:
    """What a refused node tells the coordinator (never data), signed with the node's key."""

    institution: str
    rules: tuple[str, ...]
    reasons: tuple[str, ...]
    policy_sha256: str = ""
    input_sha256: str = ""
    node_id: int = 0
    signature: str = ""

    def payload(self) -> bytes:
        raw: dict[str, Any] = {"signed": REFUSAL_CONTEXT, **asdict(self)}
        raw.pop("signature")
        raw["rules"], raw["reasons"] = list(self.rules), list(self.reasons)
        return canonical_json(raw)

    def signed(self, key: Ed25519PrivateKey) -> Refusal:
        return replace(self, signature=sign_bytes(key, self.payload()))

    def attributed_member(self, members: Mapping[str, str]) -> str | None:
        """The member who refused, if its key signed this refusal; else None.

        The caller checks ``input_sha256`` is its own run's request, so an old refusal
        replayed into another run is not attributed."""
        key = members.get(self.institution)
        if key is None or not verify_bytes(key, self.payload(), self.signature):
            return None
        return self.institution

    def to_reason(self) -> str:
        raw = json.loads(self.payload())
        raw.pop("signed")
        return json.dumps({**raw, "signature": self.signature}, sort_keys=True)

    @classmethod
    def from_reason(cls, reason: str) -> Refusal | None:
        try:
            raw = json.loads(reason)
            return cls(
                str(raw["institution"]),
                tuple(raw["rules"]),
                tuple(raw["reasons"]),
                str(raw["policy_sha256"]),
                str(raw["input_sha256"]),
                int(raw.get("node_id", 0)),
                str(raw.get("signature", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
