"""The audit side of a query: its entry and its record, many queries per transaction (group commit).

:class:`AuditWriter` appends a batch of queries to the hash chain and their records in one
transaction, signs the new head and commits; the pipeline process (:mod:`.pipeline_worker`) releases
no answer before that commit returns. A failed commit fails every query of the batch: no score
without its committed entry.

The writer keeps one connection of its own and talks to the driver directly: SQLAlchemy's
statement handling cost more than the database's work (about 0.5 ms a batch on SQLite).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg
import psycopg.errors
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.pool import PoolProxiedConnection
from sqlmodel import Session, func, select

from policies.audit import (
    ADVISORY_LOCK_KEY,
    CHAIN_LOCK,
    LAST_ENTRY,
    AuditEntry,
    SignedHead,
    chained_rows,
    last_entry,
    lock_chain,
    sign_head,
    signed_head_row,
)
from policies.query_log import QueryRecord, prune, utc_stamp
from policies.signing import public_key_text

log = logging.getLogger("fedcredit.service")
PRUNE_EVERY_S = 3600.0


@dataclass(frozen=True)
class _Statements:
    """The writer's SQL in its driver's parameter style."""

    lock: str | None  # SQLite takes its write lock at BEGIN IMMEDIATE instead
    begin: str | None
    last: str
    entries: str  # SQLite: executemany, by position
    records: str
    head: str
    together: str | None  # PostgreSQL: entries, records and head in one statement
    entry_values: Callable[[dict[str, Any]], tuple[Any, ...]]  # SQLite: a row's values in order
    record_values: Callable[[dict[str, Any]], tuple[Any, ...]]

    @classmethod
    def of(cls, dialect: Dialect) -> _Statements:
        """The chain's own lock and head queries (:mod:`policies.audit`) as the driver's SQL.

        On PostgreSQL a batch's entries, records and signed head go in one statement, the rows'
        columns as arrays that the server unnests: psycopg spends more on every statement it
        sends than the server spends on a row. SQLite takes the rows one by one, by position:
        binding by name cost more than the insert."""
        sqlite = dialect.name == "sqlite"

        def sql(statement: Any) -> str:
            return str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))

        def columns(table: Any, skip: str = "") -> list[Any]:
            return [c for c in table.__table__.columns if c.name != skip]

        def insert(table: Any, skip: str = "", by_position: bool = False) -> str:
            cols = columns(table, skip)
            names = ", ".join(c.name for c in cols)
            values = ", ".join("?" if by_position else f":{c.name}" for c in cols)
            return f"INSERT INTO {table.__tablename__} ({names}) VALUES ({values})"

        def values(table: Any, skip: str = "") -> Callable[[dict[str, Any]], tuple[Any, ...]]:
            return operator.itemgetter(*(c.name for c in columns(table, skip)))

        def unnested(table: Any, prefix: str, skip: str = "") -> str:
            cols = columns(table, skip)
            arrays = ", ".join(f"%({prefix}{c.name})b::{c.type.compile(dialect=dialect)}[]" for c in cols)
            names = ", ".join(c.name for c in cols)
            return f"INSERT INTO {table.__tablename__} ({names}) SELECT * FROM unnest({arrays})"

        head_columns = columns(SignedHead, "id")
        together = (
            f"WITH entries AS ({unnested(AuditEntry, 'e_')}), "
            f"records AS ({unnested(QueryRecord, 'r_', 'id')}) "
            f"INSERT INTO {SignedHead.__tablename__} ({', '.join(c.name for c in head_columns)}) "
            f"VALUES ({', '.join(f'%(h_{c.name})s' for c in head_columns)})"
        )
        return cls(
            lock=None if sqlite else sql(CHAIN_LOCK.bindparams(key=ADVISORY_LOCK_KEY)),
            begin="BEGIN IMMEDIATE" if sqlite else None,
            last=sql(LAST_ENTRY),
            entries=insert(AuditEntry, by_position=True),
            records=insert(QueryRecord, skip="id", by_position=True),
            head=insert(SignedHead, skip="id"),
            together=None if sqlite else together,
            entry_values=values(AuditEntry),
            record_values=values(QueryRecord, skip="id"),
        )

    def write(
        self, cursor: Any, entries: list[dict[str, Any]], records: list[dict[str, Any]], head: dict[str, Any]
    ) -> None:
        """Insert a batch's entries, its records and its signed head."""
        if self.together is None:
            cursor.executemany(self.entries, map(self.entry_values, entries))
            cursor.executemany(self.records, map(self.record_values, records))
            cursor.execute(self.head, head)
            return
        parameters = {f"e_{name}": [row[name] for row in entries] for name in entries[0]}
        parameters.update({f"r_{name}": [row[name] for row in records] for name in records[0]})
        parameters.update({f"h_{name}": value for name, value in head.items()})
        cursor.execute(self.together, parameters)


class Query(NamedTuple):
    """One scoring query as the audit log and the query record keep it (never the input itself).
    A tuple: a pass makes one per query, and a frozen dataclass took several times as long."""

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
        self._sql = _Statements.of(engine.dialect)
        self._signer = public_key_text(key.public_key())
        self._connection: PoolProxiedConnection | None = None  # the pipeline process's own
        # PostgreSQL: the chain's head as this writer's last commit left it; the next batch follows
        # it without reading it back (a round trip), unless another writer appended meanwhile
        self._head: tuple[int, str] | None = None

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
        fresh = self._connection is None
        connection = self._connection or self.engine.raw_connection()
        self._connection = None  # kept again only after a clean commit
        head, self._head = self._head, None  # likewise
        try:
            rows = self._following(connection, batch, head)
        except Exception:
            connection.invalidate()  # whatever state it is in, it is not used again
            if fresh:
                raise
            # a kept connection may have died while idle (e.g. the server restarted): one more try
            # on a new one; nothing of the failed attempt was committed
            connection = self.engine.raw_connection()
            try:
                rows = self._append(connection, batch, None)
            except Exception:
                connection.invalidate()
                raise
        self._connection = connection
        if self._sql.together is not None:
            self._head = (rows[-1]["seq"], rows[-1]["hash"])
        return [row["seq"] for row in rows]

    def _following(
        self, connection: PoolProxiedConnection, batch: list[Query], head: tuple[int, str] | None
    ) -> list[dict[str, Any]]:
        """Append after ``head`` when it is known; if another writer appended since, the first new
        entry's number is taken and nothing was written: read the head and append again."""
        if head is not None:
            try:
                return self._append(connection, batch, head)
            except psycopg.errors.UniqueViolation:
                pass
        return self._append(connection, batch, None)

    def _append(
        self, connection: PoolProxiedConnection, batch: list[Query], head: tuple[int, str] | None
    ) -> list[dict[str, Any]]:
        cursor = connection.cursor()
        try:
            with _pipelined(connection):
                rows = self._statements(cursor, batch, head)
                connection.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                connection.rollback()
            raise
        finally:
            with contextlib.suppress(Exception):
                cursor.close()
        return rows

    def _statements(
        self, cursor: Any, batch: list[Query], head: tuple[int, str] | None
    ) -> list[dict[str, Any]]:
        """Lock the chain, read its head (unless ``head`` is given), append the entries, their
        records and a signed head; the entries."""
        sql = self._sql
        if sql.begin:
            cursor.execute(sql.begin)
        if sql.lock:
            cursor.execute(sql.lock)
        if head is None:
            cursor.execute(sql.last)
            last = cursor.fetchone()
            head = None if last is None else (last[0], last[1])
        ts = utc_stamp()  # one time for the batch's entries, records and signed head
        rows = chained_rows(
            head,
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
            ts,
        )
        records = [
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
        ]
        signed = signed_head_row(self.key, rows[-1]["seq"], rows[-1]["hash"], self._signer, ts)
        sql.write(cursor, rows, records, signed)
        return rows

    def close(self) -> None:
        """Give the writer's connection back (the pipeline has stopped)."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None

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


def _pipelined(connection: PoolProxiedConnection) -> contextlib.AbstractContextManager[Any]:
    """On PostgreSQL, the transaction's statements in two round trips instead of six: psycopg sends
    them without waiting for each answer (it waits where a result is read: the chain's last entry)."""
    driver = connection.driver_connection
    return driver.pipeline() if isinstance(driver, psycopg.Connection) else contextlib.nullcontext()


def _digest(consent_reference: str) -> str:
    """The audit chain keeps a consent reference's sha256 (the record, pruned, keeps it in clear)."""
    return hashlib.sha256(consent_reference.encode("utf-8")).hexdigest() if consent_reference else ""
