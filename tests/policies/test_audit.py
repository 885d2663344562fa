"""The audit chain, against SQLite and the running PostgreSQL."""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from policies.audit import (
    AuditEntry,
    append,
    create_audit_engine,
    export_jsonl,
    record,
    sign_head,
    verify_chain,
)

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _postgres_available() -> bool:
    try:
        psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = create_audit_engine(f"sqlite:///{tmp_path / 'audit.db'}")
        yield eng
        eng.dispose()
        return
    if not _postgres_available():
        pytest.fail("PostgreSQL at 127.0.0.1:5432 (database test) is not running")
    schema = f"audit_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    eng = create_audit_engine(f"{POSTGRES}?options=-csearch_path%3D{schema}")
    try:
        yield eng
    finally:
        eng.dispose()
        with psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _fill(engine: Engine, n: int = 10) -> None:
    for i in range(n):
        record(
            engine,
            actor="node:bank_a",
            action="train.decide",
            resource=f"run-{i}",
            decision="permit",
            rules=["permit.purpose_allowed"],
            policy_sha256="a" * 64,
            input_sha256=f"{i:064d}",
        )


def _verify(engine: Engine):
    with Session(engine) as session:
        return verify_chain(session)


def _sql(engine: Engine, *statements: str) -> None:
    with engine.begin() as conn:
        for s in statements:
            conn.execute(text(s))


def test_untouched_chain_verifies(engine: Engine) -> None:
    _fill(engine)
    report = _verify(engine)
    assert report.ok and report.checked == 10 and report.first_bad_seq is None


def test_update_is_named(engine: Engine) -> None:
    _fill(engine)
    _sql(engine, "UPDATE audit_entry SET decision = 'deny' WHERE seq = 5")
    report = _verify(engine)
    assert not report.ok and report.first_bad_seq == 5
    assert report.problem == "entry 5 was modified: its content no longer matches its hash"


def test_delete_is_named(engine: Engine) -> None:
    _fill(engine)
    _sql(engine, "DELETE FROM audit_entry WHERE seq = 5")
    report = _verify(engine)
    assert report.first_bad_seq == 5 and report.problem == "entry 5 is missing: it was deleted"


def test_insert_is_named(engine: Engine) -> None:
    _fill(engine)
    _sql(
        engine,
        "UPDATE audit_entry SET seq = seq + 1000 WHERE seq >= 5",
        "UPDATE audit_entry SET seq = seq - 999 WHERE seq >= 1005",
    )
    forged = AuditEntry(
        seq=5,
        ts="2026-01-01T00:00:00.000000Z",
        actor="node:bank_a",
        action="train.decide",
        resource="run-x",
        decision="permit",
        rules="[]",
        prev="f" * 64,
        hash="",
    )
    forged.hash = forged.compute_hash()
    with Session(engine) as session:
        session.add(forged)
        session.commit()
    report = _verify(engine)
    assert (
        report.first_bad_seq == 5
        and report.problem == "entry 5 was inserted: it is not part of the signed history"
    )


def test_reorder_is_named(engine: Engine) -> None:
    _fill(engine)
    _sql(
        engine,
        "UPDATE audit_entry SET seq = 1000 WHERE seq = 5",
        "UPDATE audit_entry SET seq = 5 WHERE seq = 6",
        "UPDATE audit_entry SET seq = 6 WHERE seq = 1000",
    )
    report = _verify(engine)
    assert report.first_bad_seq == 5 and report.problem == "entries 5 and 6 were reordered"


def test_signed_head_catches_a_cut_tail(engine: Engine) -> None:
    _fill(engine)
    with Session(engine) as session:
        head = sign_head(session, Ed25519PrivateKey.generate())
        assert head is not None and head.seq == 10
        session.commit()
    _sql(engine, "DELETE FROM audit_entry WHERE seq = 10")
    report = _verify(engine)
    assert not report.ok and report.first_bad_seq == 10
    assert "differs from the head signed" in report.problem


def test_entry_and_action_share_one_transaction(engine: Engine) -> None:
    _fill(engine, 2)
    with Session(engine) as session:
        append(session, actor="coordinator", action="model.register", resource="m1")
        session.rollback()  # the action failed: its entry must vanish with it
    report = _verify(engine)
    assert report.ok and report.checked == 2


def test_eight_concurrent_writers_make_one_chain(engine: Engine) -> None:
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(15):
                record(engine, actor=f"writer-{w}", action="test.append", resource=f"{w}-{i}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    report = _verify(engine)
    assert report.ok and report.checked == 120


def test_export_jsonl(engine: Engine) -> None:
    _fill(engine, 3)
    out = io.StringIO()
    with Session(engine) as session:
        assert export_jsonl(session, out) == 3
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert lines[1]["prev"] == lines[0]["hash"]
    assert lines[0]["rules"] == ["permit.purpose_allowed"]
    assert not any(isinstance(v, float) for line in lines for v in line.values())
