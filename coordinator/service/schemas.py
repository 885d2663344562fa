"""Response bodies of the scoring service (what the OpenAPI document promises)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ReasonOut(BaseModel):
    feature: str = Field(description="The column the reason is about")
    dimension: str
    direction: Literal["raises_risk", "lowers_risk"]
    effect: float = Field(description="Change of the logit if this feature were at the population's baseline")
    value: float | int | str | None = Field(description="The applicant's value as sent")
    text: str = Field(description="The reason in plain words")


class ScoreOut(BaseModel):
    id: str
    probability_of_default: float = Field(ge=0, le=1)
    points: float
    grade: str
    logit: float
    baseline: float = Field(description="The logit of the federation's average borrower")
    contributions: dict[str, float] = Field(description="Per dimension; they add up to logit - baseline")
    reasons: list[ReasonOut] = Field(max_length=4, description="At most four, strongest first")


class ModelRef(BaseModel):
    version: str
    sha256: str
    trained_under_policy_sha256: str


class Served(BaseModel):
    model: ModelRef
    federation: str
    federation_policy_sha256: str = Field(description="The federation policy whose rules this answer follows")
    audit_entry: int = Field(description="The audit log entry committed for this query")


class ScoreResponse(Served):
    score: ScoreOut


class BatchScoreResponse(Served):
    scores: list[ScoreOut]


class DecisionResponse(Served):
    decision: Literal["approve", "refer", "decline"]
    suggested_limit: float = Field(ge=0)
    adverse_reasons: list[ReasonOut] = Field(
        max_length=4, description="On a decline or a referral: what raised the risk most"
    )
    score: ScoreOut


class ModelSummary(BaseModel):
    version: str
    federation: str
    run_id: str
    model_sha256: str
    schema_: dict[str, str] = Field(alias="schema")
    federation_policy_sha256: str
    institutions: list[dict[str, Any]]
    rounds: int
    metrics: dict[str, Any]
    epsilon: float | None
    created_at: str
    demo: bool
    active: bool


class ModelList(BaseModel):
    federation: str
    versions: list[ModelSummary]


class ModelCardOut(BaseModel):
    summary: ModelSummary
    card: dict[str, Any] | None = Field(description="The model card document, when the run wrote one")


class QueryOut(BaseModel):
    ts: str
    member: str
    action: str
    purpose: str
    consent_reference: str
    model_version: str
    input_sha256: str
    applicants: int
    audit_entry: int


class QueryList(BaseModel):
    queries: list[QueryOut]


class AuditEntryOut(BaseModel):
    seq: int
    ts: str
    actor: str
    action: str
    resource: str
    decision: str
    rules: Any
    policy_sha256: str
    input_sha256: str
    detail: dict[str, Any] | None
    prev: str
    hash: str


class AuditEntries(BaseModel):
    entries: list[AuditEntryOut]


class ChainVerification(BaseModel):
    intact: bool
    checked: int
    problem: str
    signed_seq: int
    signers: list[str]
    unsigned: int


class PolicyStatus(BaseModel):
    file: str
    kind: str
    id: str | None
    version: int | None
    sha256: str | None
    status: Literal["valid", "refused"]
    detail: str


class PolicyList(BaseModel):
    policies: list[PolicyStatus]


class Health(BaseModel):
    status: str
    model_version: str | None = None
    detail: str | None = None
