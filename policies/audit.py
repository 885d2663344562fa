"""The hash-chained audit log (SQLModel; SQLite by default, PostgreSQL via DATABASE_URL).

Each entry's hash covers its canonical encoding (sorted keys, no floats),
including its sequence number and the previous entry's hash. :func:`append`
writes inside the caller's transaction, so an action and its audit entry are
committed together or not at all; it first takes a database-wide write lock
(``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory lock on
PostgreSQL), so concurrent appenders queue instead of forking the chain. As a
second line of defence ``seq`` is the primary key: an appender that read the same
head as another numbers its first entry as the other did, and is refused. ``prev``
and ``hash`` have no index (random keys: every entry would write two random index
pages); verification walks the chain by ``seq``.

Hashes alone prove nothing against someone who can rewrite the whole table:
:func:`verify_chain` therefore only accepts a log whose heads are signed by keys
the auditor trusts, and refuses entries that no signed head covers (except, on
request, those of a run that is still open). Verifying opens the database
read-only (:func:`open_audit_readonly`): it never creates or changes one.
"""

from __future__ import annotations

import datetime as dt
import json
import operator
import re
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool
from sqlmodel import Field, Session, SQLModel, create_engine, select

from policies.db import ensure_schema, serialize_sqlite_writes
from policies.settings import FedCreditSettings
from policies.signing import canonical_json, key_id, public_key_text, sha256_hex, sign_bytes, verify_bytes

GENESIS = "0" * 64
ADVISORY_LOCK_KEY = 0x46454443  # "FEDC"
RUN_START, RUN_END = "run.start", "run.end"


def var_dir() -> Path:
    """``$FEDCREDIT_VAR_DIR``, else the project's ``var/`` folder: never relative to the current folder."""
    return FedCreditSettings().var_dir


def default_database_url() -> str:
    """The embedded SQLite file ``fedcredit.db`` in :func:`var_dir` (an absolute path)."""
    return f"sqlite:///{var_dir() / 'fedcredit.db'}"


def database_url() -> str:
    """``$DATABASE_URL`` when set and non-empty (e.g. PostgreSQL in production), else the embedded SQLite file."""
    return FedCreditSettings().audit_url


_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)


def mask_passwords(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit to print."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return mask_passwords(url)


def describe_db_error(exc: BaseException, url: str = "") -> str:
    """One line about a database failure: the driver's first line, no SQL, no parameters, no password."""
    cause = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    message = lines[0] if lines else type(cause).__name__
    message = re.sub(r"^\([\w.]+\) ", "", message)
    password = _password(url)
    return mask_passwords(message.replace(password, "***") if password else message)


def _password(url: str) -> str | None:
    try:
        return make_url(url).password
    except (ArgumentError, ValueError):
        return None


class AuditDatabaseError(Exception):
    """The audit database named cannot be opened as it is (e.g. it does not exist)."""


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
    prev: str  # not indexed: see the module's docstring
    hash: str
    detail: str = ""  # JSON object of structured details (e.g. a query's purpose); hashed when set

    def body(self, seq: int | None = None) -> dict[str, Any]:
        """The hashed content; ``seq`` overrides the stored number (to recognise moved entries)."""
        return hashed_body({name: getattr(self, name) for name in _HASHED}, self.seq if seq is None else seq)

    def compute_hash(self, seq: int | None = None) -> str:
        return sha256_hex(canonical_json(self.body(seq)))


_HASHED = (
    "ts",
    "actor",
    "action",
    "resource",
    "decision",
    "rules",
    "policy_sha256",
    "input_sha256",
    "prev",
    "detail",
)


def hashed_body(row: dict[str, Any], seq: int) -> dict[str, Any]:
    """What an entry's hash covers, from its stored columns (``detail`` only when set)."""
    extra = {"detail": _rules(row["detail"])} if row["detail"] else {}
    return {
        **extra,
        "seq": seq,
        "ts": row["ts"],
        "actor": row["actor"],
        "action": row["action"],
        "resource": row["resource"],
        "decision": row["decision"],
        "rules": _rules(row["rules"]),
        "policy_sha256": row["policy_sha256"],
        "input_sha256": row["input_sha256"],
        "prev": row["prev"],
    }


CHAIN_LOCK = text("SELECT pg_advisory_xact_lock(:key)")  # PostgreSQL; SQLite locks at BEGIN IMMEDIATE
LAST_ENTRY = (
    select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)  # type: ignore[attr-defined]
)


def chained_rows(
    after: tuple[int, str] | None, rows: list[dict[str, Any]], ts: str | None = None
) -> list[dict[str, Any]]:
    """``rows`` (actor, action, resource, decision, policy_sha256, input_sha256, detail) as the
    entries that follow ``after`` (the last entry's seq and hash; None: the first), numbered,
    linked and hashed: ready for one bulk insert, no ORM object per entry. ``ts``: their time
    (default: now)."""
    seq, prev = (0, GENESIS) if after is None else after
    ts = ts or _now()
    out = []
    for row in rows:
        seq += 1
        detail = row.get("detail")
        rules = list(row.get("rules", ()))
        stored = {
            "ts": ts,
            "actor": row["actor"],
            "action": row["action"],
            "resource": row["resource"],
            "decision": row.get("decision", ""),
            "rules": json.dumps(rules) if rules else "[]",
            "policy_sha256": row.get("policy_sha256", ""),
            "input_sha256": row.get("input_sha256", ""),
            "prev": prev,
            "detail": "",
        }
        plain = None if rules else _plain_detail(detail)
        hashed = None if plain is None else _plain_body(stored, seq, plain)
        if plain is not None and hashed is not None:  # stored as the general encoder writes it
            stored["detail"] = plain if plain.isascii() else _DETAIL.encode(detail)
        else:
            stored["detail"] = _DETAIL.encode(detail) if detail else ""
            # hashed_body(stored, seq), without parsing back what has no need of it (no rules: [])
            body = {**stored, "seq": seq, "rules": json.loads(stored["rules"]) if rules else []}
            if detail:  # as a verifier will read it back
                body["detail"] = detail if _reads_back_as_is(detail) else json.loads(stored["detail"])
            else:
                del body["detail"]
            hashed = canonical_json(body)
        stored["hash"] = prev = sha256_hex(hashed)
        out.append({"seq": seq, **stored})
    return out


_DETAIL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
_PLAIN = (str, int, float, bool, type(None))
_TEXT = json.encoder.encode_basestring  # a string as canonical JSON writes it (not ASCII-escaped)
_CONSTANTS = {True: "true", False: "false", None: "null"}
# the hashed body's text fields, in canonical (sorted) order
_TEXT_FIELDS = operator.itemgetter(
    "action", "actor", "decision", "input_sha256", "policy_sha256", "prev", "resource", "ts"
)


def _plain_detail(detail: dict[str, Any] | None) -> str | None:
    """``detail`` as canonical JSON when it is empty or flat (text keys; text, whole-number, boolean
    or null values), written directly; None for any other shape ("" when empty)."""
    if not detail:
        return ""
    if not all(type(key) is str for key in detail):
        return None
    parts = []
    for key in sorted(detail):
        value = detail[key]
        kind = type(value)
        if kind is str:
            parts.append(f"{_TEXT(key)}:{_TEXT(value)}")
        elif kind is int:
            parts.append(f"{_TEXT(key)}:{int.__repr__(value)}")
        elif kind is bool or value is None:
            parts.append(f"{_TEXT(key)}:{_CONSTANTS[value]}")
        else:
            return None
    return "{" + ",".join(parts) + "}"


def _plain_body(stored: dict[str, Any], seq: int, detail: str) -> bytes | None:
    """``canonical_json(hashed_body(stored, seq))`` for an entry with no rules and a plain detail
    (:func:`_plain_detail`), written directly: a query's entry costs a fraction of the general
    encoder's time. None when a field is not text (the general encoder decides then)."""
    values = _TEXT_FIELDS(stored)
    for value in values:
        if type(value) is not str:
            return None
    action, actor, decision, input_sha256, policy_sha256, prev, resource, ts = map(_TEXT, values)
    middle = f',"detail":{detail},' if detail else ","
    return (
        f'{{"action":{action},"actor":{actor},"decision":{decision}{middle}"input_sha256":{input_sha256},'
        f'"policy_sha256":{policy_sha256},"prev":{prev},"resource":{resource},"rules":[],"seq":{seq},'
        f'"ts":{ts}}}'
    ).encode()


def _reads_back_as_is(detail: dict[str, Any]) -> bool:
    """Whether ``detail`` hashes as its JSON read back does: text keys, plain values (a number key or
    a nested value could sort or read back otherwise, so those are parsed back instead)."""
    return all(type(k) is str and isinstance(v, _PLAIN) for k, v in detail.items())


def _rules(raw: str) -> Any:
    """The stored rules; a value that is not JSON (a tampered row) is hashed as it stands, so it
    shows as a modified entry instead of stopping the verification."""
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return {"not-json": str(raw)}


class SignedHead(SQLModel, table=True):
    """A chain head the coordinator signed (after each round): later rewrites show."""

    __tablename__ = "audit_signed_head"

    id: int | None = Field(default=None, primary_key=True)
    seq: int
    hash: str
    signed_by: str
    signature: str
    ts: str


def create_audit_engine(url: str | None = None, *, keep_sqlite_connections: bool = True) -> Engine:
    """An engine whose transactions on SQLite take the write lock at BEGIN (serialized appends).

    Creates the database and its tables when missing: for writers only (see :func:`open_audit_readonly`).
    ``url`` defaults to :func:`database_url`. With ``keep_sqlite_connections=False`` a SQLite
    engine opens its file for each transaction instead of keeping it open (for a process that
    holds an engine per simulated node: thousands of files).
    """
    url = url or database_url()
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        pool = {} if keep_sqlite_connections else {"poolclass": NullPool}
        engine = serialize_sqlite_writes(
            create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **pool)
        )
    else:
        engine = create_engine(url, pool_pre_ping=True)
    ensure_schema(engine)  # the tables come from the migrations (policies/migrations)
    return engine


def open_audit_readonly(url: str) -> Engine:
    """An engine that can only read an existing audit database; it creates and changes nothing.

    SQLite: the file opened with ``mode=ro`` (:class:`AuditDatabaseError` when there is no file);
    every session reads one snapshot. PostgreSQL: read-only, repeatable-read transactions.
    Whether the audit tables exist is for :func:`has_audit_log` to say.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True).execution_options(
            postgresql_readonly=True, isolation_level="REPEATABLE READ"
        )
    name = parsed.database or ""
    path = Path(name)
    if name in ("", ":memory:") or not path.is_file():
        raise AuditDatabaseError(f"no audit database at {path.resolve() if name else ':memory:'}")
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
        conn.isolation_level = None  # transactions as below, not pysqlite's
        return conn

    engine = create_engine("sqlite://", creator=connect, poolclass=NullPool)

    @event.listens_for(engine, "begin")
    def _snapshot(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def has_audit_log(session: Session) -> bool:
    """Whether the database behind ``session`` has the audit entry table (read-only check)."""
    return inspect(session.connection()).has_table(AuditEntry.__tablename__)


def lock_chain(session: Session | Connection) -> None:
    """Take the audit chain's write lock for the rest of the transaction (PostgreSQL; SQLite locks at BEGIN)."""
    dialect = session.dialect if isinstance(session, Connection) else session.get_bind().dialect
    if dialect.name == "postgresql":
        session.execute(CHAIN_LOCK, {"key": ADVISORY_LOCK_KEY})


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
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add one entry to the chain in ``session``'s transaction; the caller commits."""
    lock_chain(session)
    fields = {
        "actor": actor,
        "action": action,
        "resource": resource,
        "decision": decision,
        "rules": rules,
        "policy_sha256": policy_sha256,
        "input_sha256": input_sha256,
        "detail": detail,
    }
    entry = AuditEntry(**chained_rows(last_entry(session), [fields])[0])
    session.add(entry)
    session.flush()
    return entry


def last_entry(session: Session | Connection) -> tuple[int, str] | None:
    """The chain's last (seq, hash), or None when it is empty (take :func:`lock_chain` first)."""
    connection = session if isinstance(session, Connection) else session.connection()
    last = connection.execute(LAST_ENTRY).first()
    return None if last is None else (last[0], last[1])


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
    signed_seq: int = 0  # the last signed head: entry number, hash, key id
    signed_hash: str = ""
    signed_key: str = ""
    signers: tuple[str, ...] = ()  # key ids of every head signer
    unsigned: int = 0  # entries after the last signed head (of open runs, when allowed)
    open_runs: tuple[str, ...] = ()


def _belongs(entry: AuditEntry, run_id: str) -> bool:
    return entry.resource == run_id or entry.resource.startswith(run_id + "/")


def verify_chain(
    session: Session,
    trusted_keys: Collection[str],
    *,
    allow_empty: bool = False,
    allow_open_run: bool = False,
) -> ChainReport:
    """Walk the chain and its signed heads; on the first problem, name the entry and what happened.

    Only heads signed by ``trusted_keys`` count (several keys may sign one log). Every entry must
    be covered by a signed head, except, with ``allow_open_run``, trailing entries of runs that
    started (``run.start``) and have not ended (``run.end``); a run left open fails otherwise,
    since cutting the tail removes its end. An empty or missing log fails unless ``allow_empty``.
    Reads only.
    """
    has_log = has_audit_log(session)
    rows = list(entries(session)) if has_log else []
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
    n = len(rows)
    trusted = {k.strip() for k in trusted_keys}
    by_seq = {e.seq: e.hash for e in rows}
    heads = _signed_heads(session)
    for head in heads:
        if head.signed_by.strip() not in trusted:
            problem = (
                f"the head at entry {head.seq} is signed by key {_key_id(head.signed_by)}, which is not "
                "trusted: the log may have been rewritten and re-signed"
            )
        elif not verify_bytes(
            head.signed_by, canonical_json({"seq": head.seq, "hash": head.hash}), head.signature
        ):
            problem = f"signed head at entry {head.seq} has an invalid signature"
        elif by_seq.get(head.seq) != head.hash:
            problem = f"entry {head.seq} differs from the head signed at {head.ts}: history was rewritten"
        else:
            continue
        return ChainReport(False, n, head.seq, problem)
    if not rows:
        if allow_empty:
            return ChainReport(True, 0)
        where = "the audit log has no entries" if has_log else "no audit log in this database"
        return ChainReport(False, 0, None, f"{where}: nothing to verify")
    if not heads:
        return _bad(n, 1, f"{n} entries but no signed head covers them: nothing proves this history")
    last = heads[-1]
    # a run counts as open only if a trusted head covers its start: anyone can append a run.start
    started = {e.resource for e in rows if e.action == RUN_START and e.seq <= last.seq}
    open_runs = tuple(sorted(started - {e.resource for e in rows if e.action == RUN_END}))
    tail = [e for e in rows if e.seq > last.seq]
    good = ChainReport(
        True,
        n,
        head_hash=expected_prev,
        signed_seq=last.seq,
        signed_hash=last.hash,
        signed_key=key_id(last.signed_by),
        signers=tuple(sorted({key_id(h.signed_by) for h in heads})),
        unsigned=len(tail),
        open_runs=open_runs,
    )
    if tail and not allow_open_run:
        span = (
            f"entry {tail[0].seq} comes" if len(tail) == 1 else f"entries {tail[0].seq}..{tail[-1].seq} come"
        )
        problem = f"{span} after the last signed head (entry {last.seq}): no signature covers them"
        return replace(good, ok=False, first_bad_seq=tail[0].seq, problem=problem)
    for entry in tail:
        if not any(_belongs(entry, run) for run in open_runs):
            problem = (
                f"entry {entry.seq} ({entry.action} {entry.resource}) comes after the last signed head "
                f"(entry {last.seq}) and belongs to no open run: no signature covers it"
            )
            return replace(good, ok=False, first_bad_seq=entry.seq, problem=problem)
    if open_runs and not allow_open_run:
        problem = (
            f"run {open_runs[0]} has a run.start but no run.end: the run is still open, "
            "or the tail of the log was cut"
        )
        return replace(good, ok=False, problem=problem)
    return good


def _key_id(public_key: str) -> str:
    """:func:`key_id`, or the text itself when it is no key at all (a forged row)."""
    return key_id(public_key) if public_key.isascii() else repr(public_key[:24])


def _signed_heads(session: Session) -> Sequence[SignedHead]:
    if not inspect(session.connection()).has_table(SignedHead.__tablename__):
        return []
    return session.exec(select(SignedHead).order_by(SignedHead.seq, SignedHead.id)).all()  # type: ignore[arg-type]


def _bad(checked: int, seq: int, problem: str) -> ChainReport:
    return ChainReport(False, checked, seq, problem)


def sign_head(session: Session, key: Ed25519PrivateKey) -> SignedHead | None:
    """Sign the current chain head (in the caller's transaction); None on an empty chain."""
    lock_chain(session)
    last = last_entry(session)
    if last is None:
        return None
    head = SignedHead(**signed_head_row(key, *last))
    session.add(head)
    session.flush()
    return head


def signed_head_row(
    key: Ed25519PrivateKey, seq: int, hash: str, signed_by: str | None = None, ts: str | None = None
) -> dict[str, Any]:
    """The signed-head row for the chain's head ``(seq, hash)``, for a bulk insert (``signed_by``:
    ``key``'s public key text, when the caller has it already; ``ts``: the time, default now)."""
    return {
        "seq": seq,
        "hash": hash,
        "signed_by": signed_by or public_key_text(key.public_key()),
        "signature": sign_bytes(key, canonical_json({"seq": seq, "hash": hash})),
        "ts": ts or _now(),
    }


def sign_current_head(engine: Engine, key: Ed25519PrivateKey) -> SignedHead | None:
    """Sign the current chain head in a transaction of its own (e.g. right after ``run.end``)."""
    with Session(engine, expire_on_commit=False) as session:
        head = sign_head(session, key)
        session.commit()
        return head


def export_jsonl(session: Session, out: TextIO) -> int:
    """Write every entry as one canonical JSON line (with its hash); returns the count."""
    count = 0
    for entry in entries(session):
        out.write(canonical_json({**entry.body(), "hash": entry.hash}).decode("utf-8") + "\n")
        count += 1
    return count
