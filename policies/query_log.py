"""The readable record of every scoring query: who asked, why, under which consent, about what.

The audit chain holds each query as an entry too, with digests only; these rows add the
consent reference in clear and are deleted once the federation policy's retention has
passed (:func:`prune`). A member reads only its own rows.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Index
from sqlmodel import Field, Session, SQLModel, col, delete, select


class QueryRecord(SQLModel, table=True):
    __tablename__ = "query_record"
    __table_args__ = (Index("ix_query_record_member_ts", "member", "ts"),)

    id: int | None = Field(default=None, primary_key=True)
    ts: str
    member: str
    action: str  # score | score.batch | decision
    purpose: str
    consent_reference: str
    model_version: str
    input_sha256: str
    applicants: int
    audit_seq: int


def utc_stamp(when: dt.datetime | None = None) -> str:
    """The time as query records store it (sortable text)."""
    return (when or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def history(
    session: Session,
    member: str | None,
    *,
    since: str | None = None,
    until: str | None = None,
    limit: int = 100,
) -> list[QueryRecord]:
    """Newest first; ``member`` None means every member's (for auditors)."""
    query = select(QueryRecord).order_by(col(QueryRecord.id).desc()).limit(limit)
    if member is not None:
        query = query.where(QueryRecord.member == member)
    if since is not None:
        query = query.where(QueryRecord.ts >= since)
    if until is not None:
        query = query.where(QueryRecord.ts <= until)
    return list(session.exec(query).all())


def prune(session: Session, retention_days: int, now: dt.datetime | None = None) -> int:
    """Delete records older than ``retention_days`` (in the caller's transaction); returns how many."""
    cutoff = utc_stamp((now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=retention_days))
    result = session.execute(delete(QueryRecord).where(col(QueryRecord.ts) < cutoff))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
