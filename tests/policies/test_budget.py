"""The node's privacy ledger, against SQLite and the running PostgreSQL."""

from __future__ import annotations

import json

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from policies.audit import entries
from policies.budget import BudgetError, PrivacySpend, record_spend, run_epsilon, spent_elsewhere

ROUND = (1.0, 0.1, 10)  # noise multiplier, sample rate, steps


def _spend(engine: Engine, run_id: str, round_: int, planned: float = 9.0, round_plan=ROUND) -> float:
    sigma, q, steps = round_plan
    return record_spend(
        engine,
        institution="bank_a",
        run_id=run_id,
        round_=round_,
        planned=planned,
        delta=1e-5,
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
    )


def _elsewhere(engine: Engine, institution: str, run_id: str) -> float:
    with Session(engine) as session:
        return spent_elsewhere(session, institution, run_id)


def _rows(engine: Engine) -> list[PrivacySpend]:
    with Session(engine) as session:
        return list(session.exec(select(PrivacySpend)).all())


def test_runs_add_up_and_a_run_id_cannot_overwrite_another(engine: Engine) -> None:
    """Three epsilon-3 runs used to be recorded as 3.0 in all when they shared a run id."""
    for run in ("a", "b", "c"):
        _spend(engine, run, 1, planned=3.0, round_plan=(1.2, 0.1, 10))
    assert _elsewhere(engine, "bank_a", "new") == pytest.approx(9.0)
    with pytest.raises(BudgetError, match="round 1 was already trained"):
        _spend(engine, "a", 1, planned=3.0, round_plan=(1.2, 0.1, 10))
    assert len(_rows(engine)) == 3
    assert _elsewhere(engine, "bank_a", "new") == pytest.approx(9.0)
    assert _elsewhere(engine, "bank_b", "new") == 0.0


def test_the_ledger_charges_every_round_actually_run(engine: Engine) -> None:
    """The spend is the accountant over the run's real rounds, one entry per run and round."""
    totals = [_spend(engine, "r", round_) for round_ in (1, 2, 3)]
    assert totals == sorted(totals) and totals[-1] == pytest.approx(run_epsilon([ROUND] * 3, 1e-5))
    assert [(r.run_id, r.round) for r in _rows(engine)] == [("r", 1), ("r", 2), ("r", 3)]


def test_a_round_past_the_planned_epsilon_is_refused_and_audited(engine: Engine) -> None:
    """A coordinator that raises the sample rate mid-run cannot spend more than the run planned."""
    planned = run_epsilon([ROUND] * 2, 1e-5)
    _spend(engine, "r", 1, planned)
    with pytest.raises(BudgetError, match="above its planned"):
        _spend(engine, "r", 2, planned, round_plan=(1.0, 0.5, 10))
    assert [r.round for r in _rows(engine)] == [1]
    with Session(engine) as session:
        log = [(e.action, e.decision, json.loads(e.rules)) for e in entries(session)]
    assert log[-1] == ("privacy.spend", "deny", ["deny.privacy_budget"])
    _spend(engine, "r", 2, planned)  # the round as planned is still fine
