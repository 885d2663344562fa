"""The scoring service's audit writer on SQLite and PostgreSQL: a batch of queries is one signed,
chained transaction; a lost connection is replaced; a failed batch leaves nothing behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from coordinator.service.audit_writer import AuditUnavailable, AuditWriter, Query
from policies.audit import AuditEntry, SignedHead, create_audit_engine, record, verify_chain
from policies.demo_keys import DEMO_COORDINATOR_KEY
from policies.query_log import QueryRecord
from policies.signing import load_private_key, public_key_text

KEY = load_private_key(DEMO_COORDINATOR_KEY)
TRUSTED = [public_key_text(KEY.public_key())]


def query(n: int, consent: str = "consent-1") -> Query:
    return Query(
        member="national_bank",
        action="score",
        purpose="credit_underwriting",
        consent_reference=consent,
        model_version="federation.sme-consortium/v1",
        policy_sha256="p" * 64,
        input_sha256=f"{n:064x}",
        applicants=1,
        outcome="A",
    )


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_audit_engine(db_url)
    yield engine
    engine.dispose()


def counts(engine: Engine) -> tuple[int, int, int]:
    with Session(engine) as session:
        return (
            session.exec(select(func.count()).select_from(AuditEntry)).one(),
            session.exec(select(func.count()).select_from(QueryRecord)).one(),
            session.exec(select(func.count()).select_from(SignedHead)).one(),
        )


def test_a_batch_is_chained_recorded_and_signed_in_one_transaction(engine: Engine) -> None:
    writer = AuditWriter(engine, KEY, retention_days=30)
    first = writer.write([query(1), query(2), query(3, consent="")])
    second = writer.write([query(4)])
    writer.close()

    assert first == [1, 2, 3] and second == [4]
    assert counts(engine) == (4, 4, 2)  # one signed head per batch
    with Session(engine) as session:
        report = verify_chain(session, TRUSTED, allow_open_run=True)
        records = session.exec(select(QueryRecord).order_by(QueryRecord.audit_seq)).all()  # type: ignore[arg-type]
        entry = session.get(AuditEntry, 3)
    assert report.ok and report.signed_seq == 4 and report.unsigned == 0, report.problem
    assert [r.audit_seq for r in records] == [1, 2, 3, 4]
    assert [r.input_sha256 for r in records] == [f"{n:064x}" for n in (1, 2, 3, 4)]
    assert entry is not None and entry.actor == "member:national_bank" and entry.action == "query.score"
    assert '"consent_sha256":""' in entry.detail  # no consent given: no digest of an empty string


def test_a_connection_lost_while_idle_is_replaced_without_failing_the_batch(engine: Engine) -> None:
    writer = AuditWriter(engine, KEY, retention_days=30)
    writer.write([query(1)])
    kept = writer._connection
    assert kept is not None
    kept.dbapi_connection.close()  # type: ignore[union-attr]  # the server dropped it, say

    assert writer.write([query(2), query(3)]) == [2, 3]
    assert writer._connection is not kept
    writer.close()
    with Session(engine) as session:
        report = verify_chain(session, TRUSTED, allow_open_run=True)
    assert report.ok and report.checked == 3, report.problem


def test_a_batch_that_cannot_be_written_fails_whole_and_leaves_nothing(engine: Engine) -> None:
    writer = AuditWriter(engine, KEY, retention_days=30)
    writer.write([query(1)])
    with engine.begin() as connection:  # the records' table is gone: the entries would go in first
        connection.execute(text("DROP TABLE query_record"))

    with pytest.raises(AuditUnavailable):
        writer.write([query(2), query(3)])
    writer.close()
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(AuditEntry)).one() == 1
        assert session.exec(select(func.count()).select_from(SignedHead)).one() == 1
        report = verify_chain(session, TRUSTED, allow_open_run=True)
    assert report.ok and report.checked == 1, report.problem


def test_a_batch_after_another_writers_entry_still_follows_the_chain(engine: Engine) -> None:
    """On PostgreSQL the writer appends after the head its last commit left, without reading it back;
    when another writer (e.g. `fedcredit models promote`) appended meanwhile, that batch's first
    number is taken, nothing of it is written, and it is appended again after the real head."""
    writer = AuditWriter(engine, KEY, retention_days=30)
    heads: list[tuple[int, str] | None] = []
    append = writer._append

    def spy(connection, batch, head):  # type: ignore[no-untyped-def]
        heads.append(head)
        return append(connection, batch, head)

    writer._append = spy  # type: ignore[method-assign]
    assert writer.write([query(1)]) == [1]
    record(engine, actor="admin:cli", action="model.promote", resource="v2")
    assert writer.write([query(2), query(3)]) == [3, 4]
    assert writer.write([query(4)]) == [5]
    writer.close()

    with Session(engine) as session:
        report = verify_chain(session, TRUSTED, allow_open_run=True)
        actions = session.exec(select(AuditEntry.action).order_by(AuditEntry.seq)).all()  # type: ignore[arg-type]
    assert report.ok and report.checked == 5 and report.signed_seq == 5, report.problem
    assert actions == ["query.score", "model.promote", "query.score", "query.score", "query.score"]
    assert counts(engine) == (5, 4, 3)
    if engine.dialect.name == "postgresql":  # remembered, refused once, read again, remembered
        assert [h if h is None else h[0] for h in heads] == [None, 1, None, 4]
    else:  # SQLite reads the head every time (no round trip to save)
        assert heads == [None, None, None]
