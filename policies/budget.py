"""The node's privacy ledger: epsilon spent per run, persisted beside its audit log.

The lifetime budget composes runs by simple addition of their epsilons (basic
composition: conservative). A run's row is updated after every DP round in the
same transaction as the audit entry that records the spend.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, select

from policies.audit import append


class PrivacySpend(SQLModel, table=True):
    __tablename__ = "privacy_spend"

    run_id: str = Field(primary_key=True)
    institution: str
    epsilon_planned: float
    epsilon_spent: float
    delta: float
    rounds_done: int
    updated: str


@lru_cache(maxsize=16)
def ensure_ledger(engine: Engine) -> None:
    SQLModel.metadata.create_all(engine, tables=[PrivacySpend.__table__])  # type: ignore[attr-defined]


def spent_elsewhere(engine: Engine, run_id: str) -> float:
    """Epsilon spent by every run of this node except ``run_id`` (planned, if more than spent)."""
    ensure_ledger(engine)
    with Session(engine) as session:
        rows = session.exec(select(PrivacySpend).where(PrivacySpend.run_id != run_id)).all()
    return float(sum(max(r.epsilon_planned, r.epsilon_spent) for r in rows))


def record_spend(
    engine: Engine,
    *,
    institution: str,
    run_id: str,
    planned: float,
    spent: float,
    delta: float,
    rounds_done: int,
) -> None:
    """Update the run's ledger row and append the audit entry, in one transaction."""
    ensure_ledger(engine)
    with Session(engine) as session:
        row = session.get(PrivacySpend, run_id) or PrivacySpend(
            run_id=run_id,
            institution=institution,
            epsilon_planned=planned,
            epsilon_spent=0.0,
            delta=delta,
            rounds_done=0,
            updated="",
        )
        row.epsilon_spent, row.rounds_done = spent, rounds_done
        row.updated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        session.add(row)
        append(
            session,
            actor=f"node:{institution}",
            action="privacy.spend",
            resource=f"{run_id}/round-{rounds_done}/epsilon-spent={spent:.4f}/planned={planned:.4f}/delta={delta:g}",
            decision="spent",
        )
        session.commit()
