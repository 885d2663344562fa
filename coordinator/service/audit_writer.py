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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Table
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
    entries: str
    records: str
    head: str
    columns: bool  # entries and records take every row at once, a list per column (else executemany)
    order: dict[str, Callable[[dict[str, Any]], tuple[Any, ...]]]  # executemany: a row's values in order

    @classmethod
    def of(cls, dialect: Dialect) -> _Statements:
        """The chain's own lock and head queries (:mod:`policies.audit`) as the driver's SQL.

        On PostgreSQL a batch's rows go in one statement, each column an array that the server
        unnests: psycopg spends more Python on every statement it pipelines than the server spends
        on a row, so one statement per row cost more than the database's work. SQLite takes the
        rows one by one, by position: binding by name cost more than the insert."""
        sqlite = dialect.name == "sqlite"
        order: dict[str, Callable[[dict[str, Any]], tuple[Any, ...]]] = {}

        def sql(statement: Any) -> str:
            return str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))

        def insert(table: Table, skip: str = "", rows: bool = False) -> str:
            columns = [c for c in table.columns if c.name != skip]
            names = ", ".join(c.name for c in columns)
            if sqlite and rows:
                statement = f"INSERT INTO {table.name} ({names}) VALUES ({', '.join('?' for _ in columns)})"
                order[statement] = operator.itemgetter(*(c.name for c in columns))
                return statement
            if sqlite:
                return (
                    f"INSERT INTO {table.name} ({names}) VALUES ({', '.join(f':{c.name}' for c in columns)})"
                )
            if not rows:
                return f"INSERT INTO {table.name} ({names}) VALUES ({', '.join(f'%({c.name})s' for c in columns)})"
            arrays = ", ".join(f"%({c.name})b::{c.type.compile(dialect=dialect)}[]" for c in columns)
            return f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({arrays})"

        return cls(
            lock=None if sqlite else sql(CHAIN_LOCK.bindparams(key=ADVISORY_LOCK_KEY)),
            begin="BEGIN IMMEDIATE" if sqlite else None,
            last=sql(LAST_ENTRY),
            entries=insert(AuditEntry.__table__, rows=True),  # type: ignore[attr-defined]
            records=insert(QueryRecord.__table__, skip="id", rows=True),  # type: ignore[attr-defined]
            head=insert(SignedHead.__table__, skip="id"),  # type: ignore[attr-defined]
            columns=not sqlite,
            order=order,
        )

    def insert_rows(self, cursor: Any, statement: str, rows: list[dict[str, Any]]) -> None:
        """``statement`` (:attr:`entries` or :attr:`records`) for every one of ``rows``."""
        if self.columns:
            cursor.execute(statement, {name: [row[name] for row in rows] for name in rows[0]})
        else:
            cursor.executemany(statement, map(self.order[statement], rows))


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
        try:
            seqs = self._append(connection, batch)
        except Exception:
            connection.invalidate()  # whatever state it is in, it is not used again
            if fresh:
                raise
            # a kept connection may have died while idle (e.g. the server restarted): one more try
            # on a new one; nothing of the failed attempt was committed
            connection = self.engine.raw_connection()
            try:
                seqs = self._append(connection, batch)
            except Exception:
                connection.invalidate()
                raise
        self._connection = connection
        return seqs

    def _append(self, connection: PoolProxiedConnection, batch: list[Query]) -> list[int]:
        cursor = connection.cursor()
        try:
            with _pipelined(connection):
                seqs = self._statements(cursor, batch)
                connection.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                connection.rollback()
            raise
        finally:
            with contextlib.suppress(Exception):
                cursor.close()
        return seqs

    def _statements(self, cursor: Any, batch: list[Query]) -> list[int]:
        """Lock the chain, read its head, append the entries, their records and a signed head."""
        sql = self._sql
        if sql.begin:
            cursor.execute(sql.begin)
        if sql.lock:
            cursor.execute(sql.lock)
        cursor.execute(sql.last)
        last = cursor.fetchone()
        ts = utc_stamp()  # one time for the batch's entries, records and signed head
        rows = chained_rows(
            None if last is None else (last[0], last[1]),
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
        sql.insert_rows(cursor, sql.entries, rows)
        sql.insert_rows(
            cursor,
            sql.records,
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
        cursor.execute(
            sql.head, signed_head_row(self.key, rows[-1]["seq"], rows[-1]["hash"], self._signer, ts)
        )
        return [row["seq"] for row in rows]

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
