"""What a node has contributed to each run: append-only, bounded by the signed request.

The coordinator chooses the labels of its messages (phase, round), so a node
does not trust them to count. Per run it answers at most what the signed
request announces, whatever the labels say:

- one normalization-statistics contribution and one contribution-reference;
- one training update and one holdout evaluation per announced round
  (``1..rounds``), each round once;
- nothing after the contribution-reference (the run is finished);
- a run is joined only while its request is fresh (issued at most the policy's
  ``max_request_age_minutes`` ago), and a run id stays bound to the first
  request that used it, so an old request cannot be replayed.

:func:`contribution_problem` is the pure rule; :func:`claim_contribution` applies
it under the audit chain's lock and writes the contribution in the caller's
transaction, together with the decision's audit entry.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from functools import lru_cache

from sqlalchemy import UniqueConstraint
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, select

from policies.decisions import SignedRequest, issued_at

STATS = "normalization-stats"
TRAIN = "train"
EVALUATE = "evaluate"
REFERENCE = "contribution-reference"
ONCE_PER_RUN = (STATS, REFERENCE)
ONCE_PER_ROUND = (TRAIN, EVALUATE)
CLOCK_SKEW = dt.timedelta(minutes=5)


class NodeRun(SQLModel, table=True):
    """The first request a node accepted for a run id; the run id is bound to it."""

    __tablename__ = "node_run"
    __table_args__ = (UniqueConstraint("institution", "run_id"),)

    id: int | None = Field(default=None, primary_key=True)
    institution: str
    run_id: str
    request_sha256: str
    rounds: int
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


@lru_cache(maxsize=64)
def ensure_tables(engine: Engine) -> None:
    SQLModel.metadata.create_all(engine, tables=[NodeRun.__table__, Contribution.__table__])  # type: ignore[attr-defined]


def contribution_problem(
    signed: SignedRequest,
    kind: str,
    round_: int,
    bound_to: str | None,
    done: Collection[tuple[str, int]],
    now: dt.datetime,
    max_age_minutes: int,
) -> tuple[str, str] | None:
    """Why this contribution must not leave the node (rule, reason); None if it may.

    ``bound_to`` is the digest of the request the run id was first seen with (None
    for a run the node has not seen); ``done`` the (kind, round) pairs already sent.
    """
    request = signed.request
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
    max_age_minutes: int,
    now: dt.datetime | None = None,
) -> tuple[str, str] | None:
    """Check and record one contribution in ``session``'s transaction (the caller commits).

    Two messages racing for the same slot cannot both pass: the unique constraints
    refuse the second insert (:class:`sqlalchemy.exc.IntegrityError` at flush).
    """
    ensure_tables(session.get_bind())
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
    problem = contribution_problem(
        signed, kind, round_, None if run is None else run.request_sha256, done, now, max_age_minutes
    )
    if problem is not None:
        return problem
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if run is None:
        session.add(
            NodeRun(
                institution=institution,
                run_id=run_id,
                request_sha256=signed.digest,
                rounds=signed.request.rounds,
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
