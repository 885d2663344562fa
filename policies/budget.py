"""The node's privacy ledger: one append-only entry per run and DP round.

Each entry holds the round's DP-SGD parameters (noise multiplier, sample rate,
steps); a run's spend is what the RDP accountant computes over all its rounds,
so a coordinator that varies batch size or epochs between rounds is charged for
what it really caused. A round is recorded before its update is computed, in
the same transaction as the audit entry, and a round already in the ledger or
one that would take the run past its planned epsilon is refused.

The lifetime budget composes runs by simple addition of their epsilons (basic
composition: conservative); a run counts for the larger of its planned and its
spent epsilon.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import UniqueConstraint
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, select

from policies.audit import append, sign_head
from policies.contributions import NodeRun
from policies.db import ensure_schema

EPSILON_SLACK = 1e-9  # float noise in the accountant, never a real allowance


class BudgetError(Exception):
    """A DP round the ledger refuses (already spent, or past the run's planned epsilon)."""


class PrivacySpend(SQLModel, table=True):
    __tablename__ = "privacy_ledger"
    __table_args__ = (UniqueConstraint("institution", "run_id", "round"),)

    id: int | None = Field(default=None, primary_key=True)
    institution: str
    run_id: str
    round: int
    epsilon_planned: float
    epsilon_spent: float  # the run's total after this round (RDP over all its rounds)
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    ts: str


def ensure_ledger(engine: Engine) -> None:
    """The ledger's tables, and the run table it charges joined runs from (the migrations make them)."""
    ensure_schema(engine)


def run_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of a run's rounds, each (noise multiplier, sample rate, steps), at ``delta``."""
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant  # opacus loads only for a DP run: nodes start often

    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta))


def spent_elsewhere(session: Session, institution: str, run_id: str) -> float:
    """Epsilon of every other run of ``institution``: for each, the largest of the epsilon it
    planned when the node joined it and the epsilon its rounds spent."""
    per_run: dict[str, float] = {}
    joined = session.exec(
        select(NodeRun).where(NodeRun.institution == institution, NodeRun.run_id != run_id)
    ).all()
    for run in joined:
        per_run[run.run_id] = max(per_run.get(run.run_id, 0.0), run.epsilon_planned or 0.0)
    rows = session.exec(
        select(PrivacySpend).where(PrivacySpend.institution == institution, PrivacySpend.run_id != run_id)
    ).all()
    for r in rows:
        per_run[r.run_id] = max(per_run.get(r.run_id, 0.0), r.epsilon_planned, r.epsilon_spent)
    return float(sum(per_run.values()))


def record_spend(
    engine: Engine,
    *,
    institution: str,
    run_id: str,
    round_: int,
    planned: float,
    delta: float,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    sign_with: Ed25519PrivateKey | None = None,
) -> float:
    """Append this round to the ledger with its audit entry; returns the run's epsilon so far.

    Raises :class:`BudgetError` (only the refusal is written) for a round already
    recorded, or one that would spend more than ``planned`` over the run.
    ``sign_with``: the node's key, to sign the audit chain's new head.
    """
    ensure_ledger(engine)
    actor = f"node:{institution}"
    with Session(engine) as session:
        rows = session.exec(
            select(PrivacySpend).where(PrivacySpend.institution == institution, PrivacySpend.run_id == run_id)
        ).all()
        problem = None
        if any(r.round == round_ for r in rows):
            problem = f"run {run_id} round {round_} was already trained with differential privacy"
        history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in rows]
        spent = run_epsilon([*history, (noise_multiplier, sample_rate, steps)], delta)
        if problem is None and spent > planned + EPSILON_SLACK:
            problem = f"round {round_} would bring run {run_id} to epsilon {spent:.4f}, above its planned {planned:g}"
        if problem is not None:
            session.rollback()
            append(
                session,
                actor=actor,
                action="privacy.spend",
                resource=f"{run_id}/round-{round_}",
                decision="deny",
                rules=["deny.privacy_budget"],
            )
            _sign(session, sign_with)
            session.commit()
            raise BudgetError(problem)
        session.add(
            PrivacySpend(
                institution=institution,
                run_id=run_id,
                round=round_,
                epsilon_planned=planned,
                epsilon_spent=spent,
                delta=delta,
                noise_multiplier=noise_multiplier,
                sample_rate=sample_rate,
                steps=steps,
                ts=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
        )
        append(
            session,
            actor=actor,
            action="privacy.spend",
            resource=f"{run_id}/round-{round_}/epsilon-spent={spent:.4f}/planned={planned:.4f}/delta={delta:g}",
            decision="spent",
        )
        _sign(session, sign_with)
        session.commit()
    return spent


def _sign(session: Session, key: Ed25519PrivateKey | None) -> None:
    if key is not None:
        sign_head(session, key)
