"""What a node has contributed to each run: append-only, bounded by the signed request.

The coordinator chooses the labels of its messages (phase, round), so a node
does not trust them to count. Per run it answers at most what the signed
request announces, whatever the labels say:

- one normalization-statistics contribution, one fairness contribution and one
  contribution-reference;
- one training update and one holdout evaluation per announced round
  (``1..rounds``), each round once;
- nothing after the contribution-reference (the run is finished);
- an evaluation for a round only after this node's update for that round;
- a run is joined only while its request is fresh (issued at most the policy's
  ``max_request_age_minutes`` ago), and a run id stays bound to the first
  request that used it, so an old request cannot be replayed;
- at most the policy's ``max_runs_per_day`` new runs in any 24 hours, so that
  opening run after run does not multiply what the bounds above allow; a DP
  run's planned epsilon counts against the lifetime budget from the moment
  it is joined (:func:`policies.budget.spent_elsewhere`).

:func:`contribution_problem` is the pure rule; :func:`claim_contribution` applies
it under the audit chain's lock and writes the contribution in the caller's
transaction, together with the decision's audit entry.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import UniqueConstraint
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, select

from policies.db import ensure_schema
from policies.decisions import SignedRequest, issued_at

STATS = "normalization-stats"
TRAIN = "train"
EVALUATE = "evaluate"
REFERENCE = "contribution-reference"
FAIRNESS = "fairness"  # per protected group statistics on the holdout, sent before the reference
ONCE_PER_RUN = (STATS, REFERENCE, FAIRNESS)
ONCE_PER_ROUND = (TRAIN, EVALUATE)
CLOCK_SKEW = dt.timedelta(minutes=5)
STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"


class NodeRun(SQLModel, table=True):
    """The first request a node accepted for a run id; the run id is bound to it."""

    __tablename__ = "node_run"
    __table_args__ = (UniqueConstraint("institution", "run_id"),)

    id: int | None = Field(default=None, primary_key=True)
    institution: str
    run_id: str
    request_sha256: str
    rounds: int
    epsilon_planned: float | None  # charged to the lifetime budget when the run is joined
    first_seen: str


class Contribution(SQLModel, table=True):
    """One answer that left the node; never updated, never deleted."""

    __tablename__ = "node_contribution"
    __table_args__ = (UniqueConstraint("institution", "run_id", "kind", "round"),)

    id: int | None = Field(default=None, primary_key=True)
    institution: str
    run_id: str
    kind: str
    round: int
    ts: str


@dataclass(frozen=True)
class JoinLimits:
    """What an institution policy allows a new run (see ``[federation]`` in docs/policies.md)."""

    max_request_age_minutes: int
    max_runs_per_day: int


def ensure_tables(engine: Engine) -> None:
    """The run and contribution tables (the migrations make them; cheap once the database is at head)."""
    ensure_schema(engine)


def contribution_problem(
    signed: SignedRequest,
    kind: str,
    round_: int,
    bound_to: str | None,
    done: Collection[tuple[str, int]],
    now: dt.datetime,
    limits: JoinLimits,
    runs_joined_last_day: int = 0,
) -> tuple[str, str] | None:
    """Why this contribution must not leave the node (rule, reason); None if it may.

    ``bound_to`` is the digest of the request the run id was first seen with (None
    for a run the node has not seen); ``done`` the (kind, round) pairs already sent;
    ``runs_joined_last_day`` the runs this node joined in the 24 hours before ``now``.
    """
    request = signed.request
    max_age_minutes = limits.max_request_age_minutes
    if bound_to is not None and bound_to != signed.digest:
        return (
            "deny.run_id_reused",
            f"run {request.run_id} was announced with another request ({bound_to[:12]}...); "
            "a run id is bound to its first request",
        )
    if bound_to is None:
        age = now - issued_at(request)
        if age > dt.timedelta(minutes=max_age_minutes):
            return (
                "deny.stale_request",
                f"request issued at {request.issued_at}, more than {max_age_minutes} minutes ago: "
                "a new run needs a freshly signed request",
            )
        if age < -CLOCK_SKEW:
            return "deny.request_from_future", f"request issued at {request.issued_at}, in the future"
        if runs_joined_last_day >= limits.max_runs_per_day:
            return (
                "deny.too_many_runs",
                f"this node joined {runs_joined_last_day} runs in the last 24 hours; "
                f"its policy allows {limits.max_runs_per_day}",
            )
    if (REFERENCE, 0) in done:
        return "deny.run_finished", f"run {request.run_id} is finished at this node"
    if kind in ONCE_PER_RUN:
        if (kind, 0) in done:
            return "deny.contribution_repeated", f"this node already sent its {kind} for run {request.run_id}"
    elif kind in ONCE_PER_ROUND:
        if not 1 <= round_ <= request.rounds:
            return (
                "deny.round_beyond_request",
                f"round {round_} is outside the signed request's rounds 1..{request.rounds}",
            )
        if (kind, round_) in done:
            return (
                "deny.contribution_repeated",
                f"this node already sent its {kind} for round {round_} of run {request.run_id}",
            )
        if kind == EVALUATE and (TRAIN, round_) not in done:
            return (
                "deny.evaluation_before_training",
                f"this node sent no update for round {round_}: there is no model of its to evaluate",
            )
    else:
        return "deny.unknown_contribution", f"unknown contribution kind {kind!r}"
    return None


def claim_contribution(
    session: Session,
    *,
    institution: str,
    signed: SignedRequest,
    kind: str,
    round_: int,
    limits: JoinLimits,
    now: dt.datetime | None = None,
) -> tuple[str, str] | None:
    """Check and record one contribution in ``session``'s transaction (the caller commits).

    The caller holds the audit chain's write lock (:func:`policies.audit.lock_chain`);
    two messages racing for the same slot cannot both pass in any case: the unique
    constraints refuse the second insert (:class:`sqlalchemy.exc.IntegrityError` at flush).
    """
    now = now or dt.datetime.now(dt.UTC)
    run_id = signed.request.run_id
    run = session.exec(
        select(NodeRun).where(NodeRun.institution == institution, NodeRun.run_id == run_id)
    ).first()
    done = {
        (c.kind, c.round)
        for c in session.exec(
            select(Contribution).where(Contribution.institution == institution, Contribution.run_id == run_id)
        )
    }
    recent = 0
    if run is None:
        since = (now - dt.timedelta(days=1)).strftime(STAMP)
        recent = len(
            session.exec(
                select(NodeRun.id).where(NodeRun.institution == institution, NodeRun.first_seen > since)
            ).all()
        )
    problem = contribution_problem(
        signed, kind, round_, None if run is None else run.request_sha256, done, now, limits, recent
    )
    if problem is not None:
        return problem
    stamp = now.strftime(STAMP)
    if run is None:
        session.add(
            NodeRun(
                institution=institution,
                run_id=run_id,
                request_sha256=signed.digest,
                rounds=signed.request.rounds,
                epsilon_planned=signed.request.epsilon,
                first_seen=stamp,
            )
        )
    session.add(
        Contribution(
            institution=institution,
            run_id=run_id,
            kind=kind,
            round=round_ if kind in ONCE_PER_ROUND else 0,
            ts=stamp,
        )
    )
    session.flush()
    return None
