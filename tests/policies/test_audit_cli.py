"""`fedcredit audit` and `fedcredit keys` against an attacker and a careless operator (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session
from typer.testing import CliRunner

from coordinator.cli import app
from policies.audit import (
    create_audit_engine,
    database_url,
    default_database_url,
    entries,
    record,
    sign_current_head,
)
from policies.demo_keys import DEMO_COORDINATOR_KEY
from policies.signing import key_id, load_private_key, public_key_text

from .test_audit import _rewrite

runner = CliRunner()
KEY = Ed25519PrivateKey.generate()
KID = key_id(public_key_text(KEY.public_key()))
UNREACHABLE = "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test"
MASKED = "postgresql+psycopg://postgres:***@127.0.0.1:1/test"
PROJECT_VAR = Path(__file__).resolve().parents[2] / "var"


@pytest.fixture(autouse=True)
def _no_ambient_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing here may reach the developer's own var/fedcredit.db or $DATABASE_URL."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("FEDCREDIT_VAR_DIR", str(tmp_path / "default-var"))


@pytest.fixture
def trust(tmp_path: Path) -> Path:
    path = tmp_path / "trusted" / "coordinator.pub"
    path.parent.mkdir()
    path.write_text(f"# the coordinator\n{public_key_text(KEY.public_key())}\n")
    return path


def _cli(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return runner.invoke(app, list(args), env=env)


def _one_line(result: Result, code: int) -> str:
    """The command ended as intended, with exactly one line and no traceback or secret."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output and "s3cret" not in result.output
    return lines[0]


def _coordinator_run(engine: Engine, run_id: str, end: bool = True) -> None:
    """As the coordinator writes a run: 1 run.start, 2 a refusal, 3 round.end (signed), 4 run.end (signed)."""
    record(engine, actor="coordinator", action="run.start", resource=run_id)
    record(
        engine, actor="coordinator", action="fit.refused", resource=f"{run_id}/bank_a/fit-1", decision="deny"
    )
    record(engine, actor="coordinator", action="round.end", resource=f"{run_id}/round-1")
    sign_current_head(engine, KEY)
    if end:
        record(engine, actor="coordinator", action="run.end", resource=run_id, decision="completed")
        sign_current_head(engine, KEY)


def _sql(engine: Engine, *statements: str) -> None:
    with engine.begin() as conn:
        for s in statements:
            conn.execute(text(s))


def _unsigned_tail(engine: Engine) -> None:
    record(engine, actor="keys", action="key.generate", resource="officer:1")


def _heads_deleted(engine: Engine) -> None:
    _sql(engine, "DELETE FROM audit_signed_head")


def _tail_cut(engine: Engine) -> None:  # run.end and its head removed: the log ends at a signed head
    _sql(engine, "DELETE FROM audit_signed_head WHERE seq = 4", "DELETE FROM audit_entry WHERE seq = 4")


def _rewritten(engine: Engine) -> None:  # deny -> permit, hashes recomputed, re-signed with a fresh key
    _rewrite(engine, 2, "permit")


ATTACKS: dict[str, tuple[Callable[[Engine], None], str]] = {
    "unsigned tail": (_unsigned_tail, "comes after the last signed head (entry 4)"),
    "heads deleted": (_heads_deleted, "4 entries but no signed head covers them"),
    "tail cut": (_tail_cut, "run run-1 has a run.start but no run.end"),
    "rewritten": (_rewritten, "which is not trusted"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_verify_catches(attack: str, engine: Engine, db_url: str, trust: Path) -> None:
    _coordinator_run(engine, "run-1")
    line = _one_line(_cli("audit", "verify", "--db", db_url, "--trust", str(trust)), 0)
    head = _last_hash(engine)
    assert (
        line
        == f"intact: 4 entries checked; last signed head at entry 4 ({head}) by key {KID}; signers: {KID}"
    )
    tamper, problem = ATTACKS[attack]
    tamper(engine)
    for flags in ((), ("--allow-open-run",)) if attack != "tail cut" else ((),):  # a cut looks open
        line = _one_line(_cli("audit", "verify", "--db", db_url, "--trust", str(trust), *flags), 2)
        assert line.startswith("error: broken: ") and problem in line


def _last_hash(engine: Engine) -> str:
    with Session(engine) as session:
        return list(entries(session))[-1].hash


def test_an_open_run_needs_allow_open_run(engine: Engine, db_url: str, trust: Path) -> None:
    _coordinator_run(engine, "run-1", end=False)
    record(engine, actor="coordinator", action="fit.refused", resource="run-1/bank_a/fit-2", decision="deny")
    line = _one_line(_cli("audit", "verify", "--db", db_url, "--trust", str(trust)), 2)
    assert "entry 4 comes after the last signed head (entry 3): no signature covers them" in line
    line = _one_line(_cli("audit", "verify", "--db", db_url, "--trust", str(trust), "--allow-open-run"), 0)
    assert line.endswith("; 1 unsigned entries of open run(s) run-1 after it")


def test_verify_and_export_never_create_a_database(tmp_path: Path, trust: Path) -> None:
    missing = tmp_path / "typo" / "fedcredit.db"
    for args in (("audit", "verify", "--trust", str(trust)), ("audit", "export", "--jsonl", "-")):
        line = _one_line(_cli(*args, "--db", f"sqlite:///{missing}"), 2)
        assert line == f"error: no audit database at {missing}"
    assert not missing.parent.exists()


def _tables(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        return inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_verify_reads_only(db_url: str, tmp_path: Path, trust: Path) -> None:
    if db_url.startswith("sqlite"):
        (tmp_path / "audit.db").touch()  # an empty SQLite database: exists, has no audit log
    verify = ("audit", "verify", "--db", db_url, "--trust", str(trust))
    line = _one_line(_cli(*verify), 2)
    assert "no audit log in this database: nothing to verify (pass --expect-empty if that is right)" in line
    assert _one_line(_cli(*verify, "--expect-empty"), 0).startswith("intact: 0 entries in ")
    line = _one_line(_cli("audit", "export", "--jsonl", "-", "--db", db_url), 2)
    assert line.startswith("error: no audit log in ")
    assert _tables(db_url) == []  # nothing was created


def test_verify_leaves_the_sqlite_file_as_it_was(tmp_path: Path, trust: Path) -> None:
    db = tmp_path / "audit.db"
    engine = create_audit_engine(f"sqlite:///{db}")
    _coordinator_run(engine, "run-1")
    engine.dispose()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    assert _cli("audit", "verify", "--db", f"sqlite:///{db}", "--trust", str(trust)).exit_code == 0
    assert (
        _cli("audit", "export", "--jsonl", str(tmp_path / "out.jsonl"), "--db", f"sqlite:///{db}").exit_code
        == 0
    )
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:  # and it cannot write, even if it tried
        assert conn.execute("SELECT count(*) FROM audit_entry").fetchone() == (4,)


@pytest.mark.parametrize(
    "command",
    [("audit", "verify", "--trust", "KEYS"), ("audit", "export", "--jsonl", "-"), ("keys", "generate", "k")],
)
def test_an_empty_database_url_is_refused(command: tuple[str, ...], tmp_path: Path, trust: Path) -> None:
    args = [str(trust) if a == "KEYS" else a for a in command] + ["--out", str(tmp_path / "keys")] * (
        command[0] == "keys"
    )
    line = _one_line(_cli(*args, env={"DATABASE_URL": ""}), 2)
    assert line.startswith("error: DATABASE_URL is set but empty")
    line = _one_line(_cli(*args, "--db", ""), 2)
    assert line.startswith("error: --db is empty")
    assert not (tmp_path / "default-var").exists() and not (tmp_path / "keys").exists()


def test_the_default_database_does_not_depend_on_the_current_folder(
    tmp_path: Path, trust: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_audit_engine(database_url())
    _coordinator_run(engine, "run-1")
    engine.dispose()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    line = _one_line(_cli("audit", "verify", "--trust", str(trust)), 0)
    assert line.startswith("intact: 4 entries checked")
    assert database_url() == f"sqlite:///{tmp_path / 'default-var' / 'fedcredit.db'}"
    monkeypatch.delenv("FEDCREDIT_VAR_DIR")
    assert default_database_url() == f"sqlite:///{PROJECT_VAR / 'fedcredit.db'}"
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://db-host/fedcredit")
    assert database_url() == "postgresql+psycopg://db-host/fedcredit"


def test_keys_generate_with_an_unreachable_database_writes_nothing(db_url: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    line = _one_line(_cli("keys", "generate", "officer", "--out", str(keys), "--db", UNREACHABLE), 2)
    assert line.startswith(f"error: recording the key generation failed at {MASKED}: ")
    assert "Connection refused" in line
    assert not (keys / "officer.key").exists() and not (keys / "officer.pub").exists()
    result = _cli("keys", "generate", "officer", "--out", str(keys), "--db", db_url)  # the retry
    assert result.exit_code == 0, result.output
    kid = key_id((keys / "officer.pub").read_text().strip())
    engine = create_audit_engine(db_url)
    with Session(engine) as session:
        assert [(e.action, e.resource) for e in entries(session)] == [("key.generate", f"officer:{kid}")]
    engine.dispose()


def test_keys_generate_removes_the_keys_when_the_commit_fails(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_commit(self: Session) -> None:
        raise OperationalError("COMMIT", {"secret": "s3cret"}, Exception("disk I/O error"))

    monkeypatch.setattr(Session, "commit", failing_commit)
    keys = tmp_path / "keys"
    line = _one_line(_cli("keys", "generate", "officer", "--out", str(keys), "--db", db_url), 2)
    assert line.endswith(": disk I/O error") and "COMMIT" not in line
    assert list(keys.iterdir()) == []
    monkeypatch.undo()
    engine = create_audit_engine(db_url)
    with Session(engine) as session:
        assert list(entries(session)) == []  # neither the key nor its entry
    engine.dispose()


@pytest.mark.parametrize(
    "command",
    [("audit", "verify", "--trust", "KEYS"), ("audit", "export", "--jsonl", "-"), ("keys", "generate", "k")],
)
def test_database_failures_are_one_line(command: tuple[str, ...], tmp_path: Path, trust: Path) -> None:
    args = [str(trust) if a == "KEYS" else a for a in command]
    if command[0] == "keys":
        args += ["--out", str(tmp_path / "keys")]
    line = _one_line(_cli(*args, "--db", UNREACHABLE), 2)
    assert f"failed at {MASKED}: connection failed:" in line
    bad = tmp_path / "bad.db"  # an SQLite file whose audit table is not one: the SQL fails
    with sqlite3.connect(bad) as conn:
        conn.execute("CREATE TABLE audit_entry (x INTEGER)")
        conn.execute("INSERT INTO audit_entry VALUES (42)")
    line = _one_line(_cli(*args, "--db", f"sqlite:///{bad}"), 2)
    assert f"failed at sqlite:///{bad}: " in line and "no such column" in line
    assert "[SQL" not in line and "SELECT" not in line and "parameters" not in line


def test_keys_generate_that_cannot_write_its_files_records_nothing(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").touch()
    out = tmp_path / "a-file" / "keys"
    line = _one_line(_cli("keys", "generate", "officer", "--out", str(out), "--db", db_url), 2)
    assert line == f"error: writing the key files in {out} failed: Not a directory"
    engine = create_audit_engine(db_url)
    with Session(engine) as session:
        assert list(entries(session)) == []  # no entry without its key
    engine.dispose()


def test_a_log_signed_with_a_demo_key_says_so(engine: Engine, db_url: str) -> None:
    demo = load_private_key(DEMO_COORDINATOR_KEY)
    record(engine, actor="coordinator [DEMO keys]", action="run.start", resource="r")
    record(engine, actor="coordinator [DEMO keys]", action="run.end", resource="r", decision="completed")
    sign_current_head(engine, demo)
    line = _one_line(_cli("audit", "verify", "--db", db_url, "--trust", str(DEMO_COORDINATOR_KEY.parent)), 0)
    assert line.endswith("(DEMO key demo_coordinator)")


def test_export_writes_only_json_lines_and_never_over_a_file(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    _coordinator_run(engine, "run-1")
    result = _cli("audit", "export", "--jsonl", "-", "--db", db_url)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all(json.loads(line)["seq"] == i for i, line in enumerate(lines, start=1))
    assert "exported 4 entries" in result.stderr
    out = tmp_path / "audit.jsonl"
    out.write_text("an earlier export\n")
    refused = _cli("audit", "export", "--jsonl", str(out), "--db", db_url)
    assert refused.exit_code == 2 and "exists; pass --force" in refused.output
    assert out.read_text() == "an earlier export\n"
    assert _cli("audit", "export", "--jsonl", str(out), "--db", db_url, "--force").exit_code == 0
    assert len(out.read_text().splitlines()) == 4
