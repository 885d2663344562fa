"""The hash-chained audit log (SQLModel; SQLite by default, PostgreSQL via DATABASE_URL).

Each entry's hash covers its canonical encoding (sorted keys, no floats),
including its sequence number and the previous entry's hash. :func:`append`
writes inside the caller's transaction, so an action and its audit entry are
committed together or not at all; it first takes a database-wide write lock
(``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory lock on
PostgreSQL), so concurrent appenders queue instead of forking the chain. The
``prev`` column is unique as a second line of defence.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, create_engine, select

from policies.signing import canonical_json, public_key_text, sha256_hex, sign_bytes, verify_bytes

GENESIS = "0" * 64
ADVISORY_LOCK_KEY = 0x46454443  # "FEDC"
DEFAULT_DATABASE_URL = "sqlite:///var/fedcredit.db"


def database_url() -> str:
    """``$DATABASE_URL`` (e.g. PostgreSQL in production), else the embedded SQLite file."""
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_entry"

    seq: int = Field(primary_key=True)
    ts: str
    actor: str
    action: str
    resource: str
    decision: str = ""
    rules: str = "[]"  # JSON array of rule names
    policy_sha256: str = ""
    input_sha256: str = ""
    prev: str = Field(unique=True)
    hash: str = Field(unique=True)

    def body(self, seq: int | None = None) -> dict[str, Any]:
        """The hashed content; ``seq`` overrides the stored number (to recognise moved entries)."""
        return {
            "seq": self.seq if seq is None else seq,
            "ts": self.ts,
            "actor": self.actor,
            "action": self.action,
            "resource": self.resource,
            "decision": self.decision,
            "rules": json.loads(self.rules),
            "policy_sha256": self.policy_sha256,
            "input_sha256": self.input_sha256,
            "prev": self.prev,
        }

    def compute_hash(self, seq: int | None = None) -> str:
        return sha256_hex(canonical_json(self.body(seq)))


class SignedHead(SQLModel, table=True):
    """A chain head the coordinator signed (after each round): later rewrites show."""

    __tablename__ = "audit_signed_head"

    id: int | None = Field(default=None, primary_key=True)
    seq: int
    hash: str
    signed_by: str
    signature: str
    ts: str


def create_audit_engine(url: str = DEFAULT_DATABASE_URL) -> Engine:
    """An engine whose transactions on SQLite take the write lock at BEGIN (serialized appends)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _no_implicit_begin(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.isolation_level = None
            # write-ahead log: one fsync per commit (synchronous=FULL keeps every commit durable)
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=FULL")

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    else:
        engine = create_engine(url, pool_pre_ping=True)
    SQLModel.metadata.create_all(engine, tables=[AuditEntry.__table__, SignedHead.__table__])  # type: ignore[attr-defined]
    return engine


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    resource: str,
    decision: str = "",
    rules: Sequence[str] = (),
    policy_sha256: str = "",
    input_sha256: str = "",
) -> AuditEntry:
    """Add one entry to the chain in ``session``'s transaction; the caller commits."""
    _lock(session)
    last = session.exec(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).first()  # type: ignore[attr-defined]
    entry = AuditEntry(
        seq=1 if last is None else last.seq + 1,
        ts=_now(),
        actor=actor,
        action=action,
        resource=resource,
        decision=decision,
        rules=json.dumps(list(rules)),
        policy_sha256=policy_sha256,
        input_sha256=input_sha256,
        prev=GENESIS if last is None else last.hash,
        hash="",
    )
    entry.hash = entry.compute_hash()
    session.add(entry)
    session.flush()
    return entry


def record(engine: Engine, **fields: Any) -> AuditEntry:
    """Append one entry in its own transaction (for events with no other write)."""
    with Session(engine, expire_on_commit=False) as session:
        entry = append(session, **fields)
        session.commit()
        return entry


def entries(session: Session, batch: int = 1000) -> Iterator[AuditEntry]:
    """All entries in sequence order, read in batches."""
    after = 0
    while True:
        rows = session.exec(
            select(AuditEntry).where(AuditEntry.seq > after).order_by(AuditEntry.seq).limit(batch)  # type: ignore[arg-type]
        ).all()
        if not rows:
            return
        yield from rows
        after = rows[-1].seq


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str = ""
    head_hash: str = GENESIS


def verify_chain(session: Session) -> ChainReport:
    """Walk the chain; on the first break, name the entry and what happened to it."""
    rows = list(entries(session))
    expected_prev, expected_seq = GENESIS, 1
    for i, entry in enumerate(rows):
        if entry.seq != expected_seq:
            if entry.seq > expected_seq and entry.prev != expected_prev:
                return _bad(i, expected_seq, f"entry {expected_seq} is missing: it was deleted")
            return _bad(i, expected_seq, f"entry {entry.seq} stands where entry {expected_seq} should")
        intact = entry.compute_hash() == entry.hash
        if intact and entry.prev == expected_prev:
            expected_prev, expected_seq = entry.hash, expected_seq + 1
            continue
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        if entry.compute_hash(entry.seq + 1) == entry.hash:
            if nxt is not None and nxt.compute_hash(nxt.seq - 1) == nxt.hash:
                problem = f"entries {entry.seq} and {nxt.seq} were reordered"
            else:
                problem = f"entry {entry.seq} is the former entry {entry.seq + 1}: an entry was deleted and the rest renumbered"
        elif nxt is not None and nxt.compute_hash(nxt.seq - 1) == nxt.hash and nxt.prev == expected_prev:
            problem = f"entry {entry.seq} was inserted: it is not part of the signed history"
        elif intact:
            problem = f"entry {entry.seq} does not follow entry {entry.seq - 1}: entries were removed or inserted before it"
        else:
            problem = f"entry {entry.seq} was modified: its content no longer matches its hash"
        return _bad(i, entry.seq, problem)
    heads = session.exec(select(SignedHead).order_by(SignedHead.seq)).all()  # type: ignore[arg-type]
    by_seq = {e.seq: e.hash for e in rows}
    for head in heads:
        if not verify_bytes(
            head.signed_by, canonical_json({"seq": head.seq, "hash": head.hash}), head.signature
        ):
            return ChainReport(
                False, len(rows), head.seq, f"signed head at entry {head.seq} has an invalid signature"
            )
        if by_seq.get(head.seq) != head.hash:
            return ChainReport(
                False,
                len(rows),
                head.seq,
                f"entry {head.seq} differs from the head signed at {head.ts}: history was rewritten",
            )
    return ChainReport(True, len(rows), head_hash=expected_prev)


def _bad(checked: int, seq: int, problem: str) -> ChainReport:
    return ChainReport(False, checked, seq, problem)


def sign_head(session: Session, key: Ed25519PrivateKey) -> SignedHead | None:
    """Sign the current chain head (in the caller's transaction); None on an empty chain."""
    _lock(session)
    last = session.exec(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).first()  # type: ignore[attr-defined]
    if last is None:
        return None
    head = SignedHead(
        seq=last.seq,
        hash=last.hash,
        signed_by=public_key_text(key.public_key()),
        signature=sign_bytes(key, canonical_json({"seq": last.seq, "hash": last.hash})),
        ts=_now(),
    )
    session.add(head)
    session.flush()
    return head


def export_jsonl(session: Session, out: TextIO) -> int:
    """Write every entry as one canonical JSON line (with its hash); returns the count."""
    count = 0
    for entry in entries(session):
        out.write(canonical_json({**entry.body(), "hash": entry.hash}).decode("utf-8") + "\n")
        count += 1
    return count
