"""The audit chain, against SQLite and the running PostgreSQL."""

from __future__ import annotations

import io
import json
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from policies.audit import (
    GENESIS,
    AuditEntry,
    ChainReport,
    append,
    chained_rows,
    entries,
    export_jsonl,
    last_entry,
    record,
    sign_current_head,
    sign_head,
    verify_chain,
)
from policies.signing import key_id, public_key_text

KEY = Ed25519PrivateKey.generate()  # the coordinator's
NODE_KEY = Ed25519PrivateKey.generate()  # a node's: a log may be signed by several trusted keys
TRUSTED = (public_key_text(KEY.public_key()), public_key_text(NODE_KEY.public_key()))


def _fill(engine: Engine, n: int = 10, sign: bool = True) -> None:
    """``n`` decisions, then a signed head (as the node does after its decisions)."""
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
    if sign:
        sign_current_head(engine, KEY)


def _verify(engine: Engine, trusted: tuple[str, ...] = TRUSTED, **flags: bool) -> ChainReport:
    with Session(engine) as session:
        return verify_chain(session, trusted, **flags)


def _sql(engine: Engine, *statements: str) -> None:
    with engine.begin() as conn:
        for s in statements:
            conn.execute(text(s))


def test_untouched_chain_verifies(engine: Engine) -> None:
    _fill(engine)
    report = _verify(engine)
    assert report.ok and report.checked == 10 and report.first_bad_seq is None
    assert (report.signed_seq, report.signed_key, report.signers) == (
        10,
        key_id(TRUSTED[0]),
        (key_id(TRUSTED[0]),),
    )


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
        head = sign_head(session, KEY)
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
    sign_current_head(engine, KEY)
    report = _verify(engine)
    assert report.ok and report.checked == 120


def test_a_writer_that_skips_the_lock_cannot_fork_the_chain(engine: Engine) -> None:
    """Two appenders read the same head (one of them without the chain lock): the second one's
    entry has the first one's number, and the database refuses it."""
    _fill(engine, 2)
    with Session(engine) as session:
        head = last_entry(session)
    first, second = (
        AuditEntry(**chained_rows(head, [{"actor": a, "action": "test.append", "resource": "r"}])[0])
        for a in ("writer-a", "writer-b")
    )
    assert first.prev == second.prev and first.seq == second.seq == 3
    with Session(engine) as session:
        session.add(first)
        session.commit()
    with Session(engine) as session, pytest.raises(IntegrityError):
        session.add(second)
        session.commit()
    sign_current_head(engine, KEY)
    report = _verify(engine)
    assert report.ok and report.checked == 3


@pytest.mark.parametrize(
    "detail",
    [
        None,
        {},
        {"purpose": "credit_underwriting", "applicants": 3, "consent_sha256": "", "retry": False},
        {"z": None, "a": True, "b": -12, "quote": 'say "hi"\\ and \u00e9t\u00e9 \u2028 \x00 \x1f \x7f'},
        {"nested": {"b": 1, "a": [2, 1]}, "n": 1},  # not flat: the general encoder
        {"rate": 0.1, "big": 10**30},  # a float: the general encoder
        {"\u00fcber": "na\u00efve", "emoji": "\U0001f600"},
    ],
)
def test_entries_hash_as_the_verifier_recomputes_them(detail: dict[str, object] | None) -> None:
    """A query's entry is hashed by a direct writer of its canonical JSON when its detail is flat:
    whatever the detail holds, the hash is the one a verifier recomputes from the stored row, and
    the stored detail is the JSON the general encoder writes."""
    fields = {
        "actor": 'member:caf\u00e9 "bank"',
        "action": "query.score",
        "resource": "federation.sme/v1",
        "decision": "B",
        "policy_sha256": "a" * 64,
        "input_sha256": "b" * 64,
        **({} if detail is None else {"detail": detail}),
    }
    rows = chained_rows(
        (7, "c" * 64), [fields, {**fields, "actor": "member:other"}], "2026-01-02T03:04:05.000006Z"
    )
    for row in rows:
        entry = AuditEntry(**row)
        assert entry.compute_hash() == row["hash"]
        assert row["detail"] == (json.dumps(detail, sort_keys=True, separators=(",", ":")) if detail else "")
        assert row["ts"] == "2026-01-02T03:04:05.000006Z"
    assert [r["seq"] for r in rows] == [8, 9] and rows[1]["prev"] == rows[0]["hash"]


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


# --- the attacker and the careless operator: what hashes alone never caught --------------------


def _run(engine: Engine, run_id: str, rounds: int = 2, end: bool = True) -> None:
    """What the coordinator writes: run.start, a signed head after each round, run.end and a signed head."""
    record(engine, actor="coordinator", action="run.start", resource=run_id)
    for r in range(1, rounds + 1):
        record(engine, actor="coordinator", action="round.end", resource=f"{run_id}/round-{r}")
        sign_current_head(engine, KEY)
    if end:
        record(engine, actor="coordinator", action="run.end", resource=run_id, decision="completed")
        sign_current_head(engine, KEY)


def test_entries_after_the_last_signed_head_fail(engine: Engine) -> None:
    _fill(engine, 10)
    _fill(engine, 3, sign=False)  # never signed: whoever deletes them leaves no trace
    report = _verify(engine)
    assert not report.ok and report.first_bad_seq == 11
    assert "entries 11..13 come after the last signed head (entry 10)" in report.problem
    assert not _verify(engine, allow_open_run=True).ok  # they belong to no open run


def test_a_cut_tail_that_removed_run_end_fails(engine: Engine) -> None:
    _run(engine, "run-1")  # 1 start, 2-3 rounds, 4 end; heads at 2, 3, 4
    assert _verify(engine).ok
    _sql(engine, "DELETE FROM audit_signed_head WHERE seq = 4", "DELETE FROM audit_entry WHERE seq = 4")
    report = _verify(engine)
    assert not report.ok and "run run-1 has a run.start but no run.end" in report.problem


def test_an_open_run_passes_only_when_allowed(engine: Engine) -> None:
    _run(engine, "run-1")
    _run(engine, "run-2", end=False)
    record(
        engine, actor="coordinator", action="train.refused", resource="run-2/bank_a/fit-3", decision="deny"
    )
    assert not _verify(engine).ok
    report = _verify(engine, allow_open_run=True)
    assert report.ok and report.unsigned == 1 and report.open_runs == ("run-2",)
    record(engine, actor="keys", action="key.generate", resource="officer:abc")  # not part of the run
    report = _verify(engine, allow_open_run=True)
    assert not report.ok and report.first_bad_seq == 9 and "belongs to no open run" in report.problem


def test_run_end_not_signed_is_not_an_open_run(engine: Engine) -> None:
    _run(engine, "run-1", end=False)
    record(engine, actor="coordinator", action="run.end", resource="run-1", decision="completed")
    report = _verify(engine, allow_open_run=True)
    assert not report.ok and report.first_bad_seq == 4


def test_signed_heads_deleted_fail(engine: Engine) -> None:
    _run(engine, "run-1")
    _sql(engine, "DELETE FROM audit_signed_head")
    report = _verify(engine)
    assert (
        not report.ok
        and report.problem == "4 entries but no signed head covers them: nothing proves this history"
    )


def _rewrite(engine: Engine, seq: int, decision: str) -> Ed25519PrivateKey:
    """The attacker with write access: change one entry, recompute every hash, re-sign with a key of his own."""
    with Session(engine) as session:
        prev = GENESIS
        for entry in list(entries(session)):
            if entry.seq == seq:
                entry.decision = decision
            entry.prev, entry.hash = prev, ""
            entry.hash = prev = entry.compute_hash()
            session.add(entry)
        session.flush()
        session.execute(text("DELETE FROM audit_signed_head"))
        session.commit()
    forger = Ed25519PrivateKey.generate()
    sign_current_head(engine, forger)
    return forger


def test_a_rewritten_and_re_signed_chain_fails(engine: Engine) -> None:
    _fill(engine, 4, sign=False)
    record(engine, actor="node:bank_a", action="train.decide", resource="run-4", decision="deny")
    _fill(engine, 5)  # the genuine log: entry 5 denied, signed by the node
    assert _verify(engine).ok
    forger = _rewrite(engine, 5, "permit")  # now it permits, every hash consistent, heads re-signed
    forged = public_key_text(forger.public_key())
    report = _verify(engine)
    assert not report.ok and report.first_bad_seq == 10
    assert f"signed by key {key_id(forged)}, which is not trusted" in report.problem
    assert _verify(engine, (forged,)).ok  # it fools only whoever trusts the forger's key


def test_a_head_with_a_bad_signature_fails(engine: Engine) -> None:
    _fill(engine, 3)
    _sql(engine, "UPDATE audit_signed_head SET seq = 2, hash = (SELECT hash FROM audit_entry WHERE seq = 2)")
    report = _verify(engine)
    assert not report.ok and report.problem == "signed head at entry 2 has an invalid signature"
    _sql(engine, "UPDATE audit_signed_head SET signed_by = 'ed25519:\u00e9'")  # not even a key
    report = _verify(engine)
    assert not report.ok and "signed by key 'ed25519:\u00e9', which is not trusted" in report.problem


def test_several_trusted_signers(engine: Engine) -> None:
    _run(engine, "run-1")
    _fill(engine, 2, sign=False)
    sign_current_head(engine, NODE_KEY)
    report = _verify(engine)
    assert report.ok and report.signed_seq == 6 and report.signed_key == key_id(TRUSTED[1])
    assert report.signers == tuple(sorted(key_id(k) for k in TRUSTED))
    assert not _verify(engine, TRUSTED[:1]).ok  # the node's key is not trusted here


def test_an_empty_log_fails_unless_expected(engine: Engine) -> None:
    report = _verify(engine)
    assert not report.ok and report.problem == "the audit log has no entries: nothing to verify"
    assert _verify(engine, allow_empty=True).ok


def test_sign_current_head(engine: Engine) -> None:
    assert sign_current_head(engine, KEY) is None  # nothing to sign yet
    _fill(engine, 2, sign=False)
    head = sign_current_head(engine, KEY)
    assert head is not None and head.seq == 2 and head.signed_by == TRUSTED[0]


def test_a_forged_run_start_does_not_open_a_run(engine: Engine) -> None:
    """Appending 'run.start FAKE' and entries under it does not make them an open run's tail."""
    _run(engine, "run-1")
    record(engine, actor="coordinator", action="run.start", resource="FAKE")
    record(engine, actor="coordinator", action="train.decide", resource="FAKE/x", decision="permit")
    report = _verify(engine, allow_open_run=True)
    assert not report.ok and report.first_bad_seq == 5 and "belongs to no open run" in report.problem


def test_a_row_that_is_not_json_is_a_modified_entry_not_a_crash(engine: Engine) -> None:
    _run(engine, "run-1")
    _sql(engine, "UPDATE audit_entry SET rules = 'not json' WHERE seq = 2")
    report = _verify(engine)
    assert not report.ok and report.first_bad_seq == 2 and "was modified" in report.problem


def test_every_kind_of_detail_verifies_as_stored(engine: Engine) -> None:
    """An entry's hash covers its detail as a verifier reads it back: plain details are hashed as
    given, others (number keys, nested values, tuples) as their JSON reads back."""
    details = [
        {"purpose": "credit_underwriting", "applicants": 3, "share": 0.1, "ok": True, "none": None},
        {"é": "ü", "-0": -0.0, "big": 2**70},
        {10: "ten", 9: "nine"},  # sorted as numbers, read back as text: "10" < "9"
        {"nested": {"b": 1, "a": [1, (2, 3)]}, "pair": (1, 2)},
    ]
    with Session(engine) as session:
        for i, detail in enumerate(details):
            append(session, actor="service", action="query.score", resource=f"r{i}", detail=detail)  # type: ignore[arg-type]
        sign_head(session, KEY)
        session.commit()
    report = _verify(engine)
    assert report.ok and report.checked == len(details)
