"""Group commit: every query's audit entry is committed before its answer leaves, many per transaction.

Request handlers hand a :class:`Query` to :meth:`AuditWriter.submit` and await it. One
writer thread takes whatever is queued (up to ``max_batch``), appends the entries to the
hash chain and their query records in one transaction, signs the new head, commits, and
only then releases the waiting requests. A failed commit fails every request of that
batch: no score without its committed entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlmodel import Session

from policies.audit import last_entry, lock_chain, new_entry, sign_head
from policies.query_log import QueryRecord, prune, utc_stamp

log = logging.getLogger("fedcredit.service")
PRUNE_EVERY_S = 3600.0


@dataclass
class Query:
    """One scoring query as the audit log and the query record keep it (never the input itself)."""

    member: str
    action: str  # score | score.batch | decision
    purpose: str
    consent_reference: str
    model_version: str
    model_sha256: str
    policy_sha256: str
    input_sha256: str
    applicants: int
    outcome: str = ""  # e.g. a decision
    future: asyncio.Future[int] | None = field(default=None, repr=False)
    queued_at: float = field(default_factory=time.perf_counter)


class AuditUnavailable(Exception):
    """The audit entry could not be committed: the query must fail."""


class AuditWriter:
    def __init__(
        self,
        engine: Engine,
        key: Ed25519PrivateKey,
        retention_days: int,
        max_batch: int = 256,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.key = key
        self.retention_days = retention_days
        self.max_batch = max_batch
        self.on_commit = on_commit  # (entries, seconds from the oldest's arrival to its commit)
        self._queue: queue.Queue[Query | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._last_prune = 0.0
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    async def submit(self, query: Query) -> int:
        """Queue ``query`` and wait until its entry is committed; returns the entry's number."""
        loop = asyncio.get_running_loop()
        query.future = loop.create_future()
        self._queue.put(query)
        return await query.future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._commit(batch)
                    return
                batch.append(item)
            self._commit(batch)
            self._maybe_prune()

    def _commit(self, batch: list[Query]) -> None:
        try:
            seqs = self._write(batch)
        except Exception as exc:  # a database failure: every waiting request fails, nothing is served
            self.failures += 1
            log.error("audit commit of %d queries failed: %s", len(batch), type(exc).__name__)
            for q in batch:
                _resolve(q, error=AuditUnavailable(type(exc).__name__))
            return
        if self.on_commit is not None:
            self.on_commit(len(batch), time.perf_counter() - min(q.queued_at for q in batch))
        for q, seq in zip(batch, seqs, strict=True):
            _resolve(q, seq=seq)

    def _write(self, batch: list[Query]) -> list[int]:
        with Session(self.engine) as session:
            lock_chain(session)
            after = last_entry(session)
            entries, records = [], []
            ts = utc_stamp()
            for q in batch:
                detail = {
                    "purpose": q.purpose,
                    "consent_reference": q.consent_reference,
                    "model_version": q.model_version,
                    "applicants": q.applicants,
                }
                entry = new_entry(
                    after,
                    actor=f"member:{q.member}",
                    action=f"query.{q.action}",
                    resource=q.model_version,
                    decision=q.outcome,
                    policy_sha256=q.policy_sha256,
                    input_sha256=q.input_sha256,
                    detail=detail,
                )
                after = (entry.seq, entry.hash)
                entries.append(entry)
                records.append(
                    QueryRecord(
                        ts=ts,
                        member=q.member,
                        action=q.action,
                        purpose=q.purpose,
                        consent_reference=q.consent_reference,
                        model_version=q.model_version,
                        input_sha256=q.input_sha256,
                        applicants=q.applicants,
                        audit_seq=entry.seq,
                    )
                )
            session.add_all(entries)
            session.flush()  # the entries first: the signed head must cover rows that exist
            session.add_all(records)
            sign_head(session, self.key)
            session.commit()
            return [e.seq for e in entries]

    def _maybe_prune(self) -> None:
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


def _resolve(q: Query, *, seq: int = 0, error: Exception | None = None) -> None:
    future = q.future
    if future is None:
        return
    loop = future.get_loop()

    def settle() -> None:
        if future.done():  # the request went away (client disconnected)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(seq)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
        loop.call_soon_threadsafe(settle)
