"""The model registry: every federated run's model, numbered per federation, and which one is active.

A version records the weights file and its sha256, the schema, the federation policy's
digest, the participating institutions (with their policies' digests when known), the
rounds, metrics and the privacy spent. Activations are an append-only history: the
latest row of a federation is its active version, so a rollback is one more row and
nothing is lost. Every change is an audit entry in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, Session, SQLModel, col, func, select

from policies.audit import append


class RegistryError(Exception):
    """A version that does not exist, or a change the registry refuses (one line)."""


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("federation", "version"), UniqueConstraint("federation", "run_id"))

    id: int | None = Field(default=None, primary_key=True)
    federation: str
    version: int
    run_id: str
    model_path: str
    model_sha256: str
    schema_name: str
    schema_version: str
    schema_sha256: str
    federation_policy_sha256: str
    institutions: str  # JSON: [{"name", "policy_sha256"}]
    rounds: int
    metrics: str  # JSON: {"global": {...}, "institutions": {name: {...}}}
    epsilon: float | None = None
    created_at: str
    demo: bool = False

    @property
    def label(self) -> str:
        """How members and admins name it: ``v3``."""
        return f"v{self.version}"

    def summary(self) -> dict[str, Any]:
        """JSON-ready: what ``models list`` and ``GET /v1/models`` show."""
        return {
            "version": self.label,
            "federation": self.federation,
            "run_id": self.run_id,
            "model_sha256": self.model_sha256,
            "schema": {
                "name": self.schema_name,
                "version": self.schema_version,
                "sha256": self.schema_sha256,
            },
            "federation_policy_sha256": self.federation_policy_sha256,
            "institutions": json.loads(self.institutions),
            "rounds": self.rounds,
            "metrics": json.loads(self.metrics),
            "epsilon": self.epsilon,
            "created_at": self.created_at,
            "demo": self.demo,
        }


class ModelActivation(SQLModel, table=True):
    __tablename__ = "model_activation"
    __table_args__ = (Index("ix_model_activation_federation", "federation", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    federation: str
    version: int
    action: str  # promote | rollback
    actor: str
    ts: str


@dataclass(frozen=True)
class Registration:
    """What a finished run hands the registry."""

    federation: str
    run_id: str
    model_path: str
    model_sha256: str
    schema_name: str
    schema_version: str
    schema_sha256: str
    federation_policy_sha256: str
    institutions: tuple[tuple[str, str | None], ...]  # (name, policy sha256 or None)
    rounds: int
    metrics: dict[str, Any]
    epsilon: float | None
    demo: bool


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def parse_version(text: str) -> int:
    """``v3`` or ``3`` -> 3; anything else is one line of error."""
    raw = text.strip().lower().removeprefix("v")
    if not raw.isdigit() or int(raw) < 1:
        raise RegistryError(f"{text!r} is not a model version (write it v1, v2, ...)")
    return int(raw)


def register(session: Session, reg: Registration, actor: str, *, activate_first: bool = True) -> ModelVersion:
    """Add the next version of ``reg.federation`` in the caller's transaction (audited); the first
    version of a federation becomes active at once."""
    last = session.exec(
        select(func.max(ModelVersion.version)).where(ModelVersion.federation == reg.federation)
    ).one()
    version = ModelVersion(
        federation=reg.federation,
        version=(last or 0) + 1,
        run_id=reg.run_id,
        model_path=reg.model_path,
        model_sha256=reg.model_sha256,
        schema_name=reg.schema_name,
        schema_version=reg.schema_version,
        schema_sha256=reg.schema_sha256,
        federation_policy_sha256=reg.federation_policy_sha256,
        institutions=json.dumps([{"name": n, "policy_sha256": p} for n, p in reg.institutions]),
        rounds=reg.rounds,
        metrics=json.dumps(reg.metrics, sort_keys=True),
        epsilon=reg.epsilon,
        created_at=_now(),
        demo=reg.demo,
    )
    session.add(version)
    session.flush()
    append(
        session,
        actor=actor,
        action="model.version",
        resource=f"{reg.federation}/{version.label}",
        policy_sha256=reg.federation_policy_sha256,
        input_sha256=reg.model_sha256,
        detail={"run_id": reg.run_id, "version": version.version},
    )
    if activate_first and last is None:
        _activate(session, version, "promote", actor)
    return version


def versions(session: Session, federation: str | None = None) -> list[ModelVersion]:
    query = select(ModelVersion).order_by(col(ModelVersion.federation), col(ModelVersion.version))
    if federation is not None:
        query = query.where(ModelVersion.federation == federation)
    return list(session.exec(query).all())


def federations(session: Session) -> list[str]:
    return list(session.exec(select(ModelVersion.federation).distinct().order_by(ModelVersion.federation)))


def get_version(session: Session, federation: str, version: int) -> ModelVersion:
    found = session.exec(
        select(ModelVersion).where(ModelVersion.federation == federation, ModelVersion.version == version)
    ).first()
    if found is None:
        raise RegistryError(f"federation {federation!r} has no model version v{version}")
    return found


def _history(session: Session, federation: str) -> list[ModelActivation]:
    return list(
        session.exec(
            select(ModelActivation)
            .where(ModelActivation.federation == federation)
            .order_by(col(ModelActivation.id).desc())
        ).all()
    )


def active_version(session: Session, federation: str) -> ModelVersion | None:
    history = _history(session, federation)
    return get_version(session, federation, history[0].version) if history else None


def _activate(session: Session, version: ModelVersion, action: str, actor: str) -> None:
    session.add(
        ModelActivation(
            federation=version.federation, version=version.version, action=action, actor=actor, ts=_now()
        )
    )
    append(
        session,
        actor=actor,
        action=f"model.{action}",
        resource=f"{version.federation}/{version.label}",
        policy_sha256=version.federation_policy_sha256,
        input_sha256=version.model_sha256,
    )


def promote(session: Session, federation: str, version: int, actor: str) -> ModelVersion:
    """Make ``version`` the active one (audited, in the caller's transaction)."""
    target = get_version(session, federation, version)
    current = active_version(session, federation)
    if current is not None and current.version == target.version:
        raise RegistryError(f"{federation} {target.label} is already the active version")
    _activate(session, target, "promote", actor)
    return target


def _active_stack(history: list[ModelActivation]) -> list[int]:
    """The versions made active one after another, a rollback taking the last one off."""
    stack: list[int] = []
    for activation in reversed(history):  # oldest first
        if activation.action == "rollback":
            while stack and stack[-1] != activation.version:
                stack.pop()
            if not stack:
                stack.append(activation.version)
        elif not stack or stack[-1] != activation.version:
            stack.append(activation.version)
    return stack


def rollback(session: Session, federation: str, actor: str) -> ModelVersion:
    """Re-activate the version that was active before the current one; rolling back again goes
    further back (promote v1, v2, v3; rollback: v2; rollback: v1)."""
    history = _history(session, federation)
    if not history:
        raise RegistryError(f"federation {federation!r} has no active model version to roll back")
    stack = _active_stack(history)
    if len(stack) < 2:
        raise RegistryError(
            f"{federation} v{stack[-1]} is the first version that was active: nothing to roll back to"
        )
    target = get_version(session, federation, stack[-2])
    _activate(session, target, "rollback", actor)
    return target
