"""The audit side of a query: its entry and its record, many queries per transaction (group commit).

:class:`AuditWriter` appends a batch of queries to the hash chain and their records in one
transaction, signs the new head and commits; the scoring pipeline (:mod:`.pipeline`) releases
no answer before that commit returns. A failed commit fails every query of the batch: no score
without its committed entry.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from policies.audit import (
    AuditEntry,
    SignedHead,
    chained_rows,
    last_entry,
    lock_chain,
    sign_head,
    signed_head_row,
)
from policies.query_log import QueryRecord, prune, utc_stamp

log = logging.getLogger("fedcredit.service")
PRUNE_EVERY_S = 3600.0
_ENTRIES = AuditEntry.__table__.insert()  # type: ignore[attr-defined]
_RECORDS = QueryRecord.__table__.insert()  # type: ignore[attr-defined]
_HEADS = SignedHead.__table__.insert()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Query:
    """One scoring query as the audit log and the query record keep it (never the input itself)."""

    member: str
    action: str  # score | score.batch | decision
    purpose: str
    consent_reference: str
    model_version: str
    policy_sha256: str
    input_sha256: str
    applicants: int
    outcome: str = ""  # e.g. a grade or a decision


class AuditUnavailable(Exception):
    """The audit entry could not be committed: the query must fail."""


class AuditWriter:
    def __init__(self, engine: Engine, key: Ed25519PrivateKey, retention_days: int) -> None:
        self.engine = engine
        self.key = key
        self.retention_days = retention_days
        self._last_prune = 0.0

    def write(self, batch: list[Query]) -> list[int]:
        """Commit ``batch``'s entries and records; their entry numbers. Raises :class:`AuditUnavailable`."""
        try:
            return self._write(batch)
        except Exception as exc:  # a database failure: the caller serves nothing of this batch
            log.error("audit commit of %d queries failed: %s", len(batch), type(exc).__name__)
            raise AuditUnavailable(type(exc).__name__) from None

    def sign_if_behind(self) -> None:
        """Sign the chain head when entries were appended after the last signed head (e.g. a model
        promoted or a token issued from the command line), so the log verifies without waiting
        for the next query."""
        try:
            with Session(self.engine) as session:
                lock_chain(session)
                last = last_entry(session)
                signed = session.exec(select(func.max(SignedHead.seq))).one()
                if last is not None and (signed or 0) < last[0]:
                    sign_head(session, self.key)
                    session.commit()
        except Exception as exc:
            log.error("signing the audit head failed: %s", type(exc).__name__)

    def _write(self, batch: list[Query]) -> list[int]:
        # Core statements on one connection: no ORM object per row, one signed head per batch
        with self.engine.begin() as connection:
            lock_chain(connection)
            rows = chained_rows(
                last_entry(connection),
                [
                    {
                        "actor": f"member:{q.member}",
                        "action": f"query.{q.action}",
                        "resource": q.model_version,
                        "decision": q.outcome,
                        "policy_sha256": q.policy_sha256,
                        "input_sha256": q.input_sha256,
                        "detail": {
                            "purpose": q.purpose,
                            "consent_sha256": _digest(q.consent_reference),
                            "model_version": q.model_version,
                            "applicants": q.applicants,
                        },
                    }
                    for q in batch
                ],
            )
            connection.execute(_ENTRIES, rows)
            ts = utc_stamp()
            connection.execute(
                _RECORDS,
                [
                    {
                        "ts": ts,
                        "member": q.member,
                        "action": q.action,
                        "purpose": q.purpose,
                        "consent_reference": q.consent_reference,
                        "model_version": q.model_version,
                        "input_sha256": q.input_sha256,
                        "applicants": q.applicants,
                        "audit_seq": row["seq"],
                    }
                    for q, row in zip(batch, rows, strict=True)
                ],
            )
            connection.execute(_HEADS, signed_head_row(self.key, rows[-1]["seq"], rows[-1]["hash"]))
        return [row["seq"] for row in rows]

    def maybe_prune(self) -> None:
        """:meth:`prune_now`, at most once an hour."""
        now = time.monotonic()
        if now - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = now
        self.prune_now()

    def prune_now(self, when: dt.datetime | None = None) -> int:
        """Delete query records past the policy's retention (their audit entries, digests only, stay)."""
        try:
            with Session(self.engine) as session:
                removed = prune(session, self.retention_days, when)
                session.commit()
                return removed
        except Exception as exc:
            log.error("pruning query records failed: %s", type(exc).__name__)
            return 0


def _digest(consent_reference: str) -> str:
    """The audit chain keeps a consent reference's sha256 (the record, pruned, keeps it in clear)."""
    return hashlib.sha256(consent_reference.encode("utf-8")).hexdigest() if consent_reference else ""
