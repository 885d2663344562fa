"""The tables come from the Alembic migrations in policies/migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool
from sqlmodel import Session, SQLModel, select
from typer.testing import CliRunner

import policies.db as db
from policies.audit import (
    AuditEntry,
    SignedHead,
    create_audit_engine,
    record,
    sign_current_head,
    verify_chain,
)
from policies.budget import PrivacySpend
from policies.contributions import Contribution, NodeRun
from policies.db import (
    ALL_TABLES,
    INITIAL_REVISION,
    INITIAL_TABLES,
    SERVICE_TABLES,
    SchemaError,
    ensure_schema,
    head_revision,
    upgrade,
)
from policies.db_cli import db_app
from policies.member_keys import ApiKey
from policies.query_log import QueryRecord
from policies.registry import ModelActivation, ModelVersion
from policies.signing import public_key_text

MODELS = (AuditEntry, SignedHead, NodeRun, Contribution, PrivacySpend)
AUDIT_MODELS = (AuditEntry, SignedHead)
SERVICE_MODELS = (ModelVersion, ModelActivation, ApiKey, QueryRecord)  # revision 0002
ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def plain(db_url: str) -> Iterator[Engine]:
    """A plain engine on the fresh database: nothing migrated, nothing created."""
    eng = create_engine(db_url, poolclass=NullPool)
    yield eng
    eng.dispose()


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _revision(eng: Engine) -> str | None:
    with eng.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _schema_diffs(eng: Engine) -> list[object]:
    """What autogenerate would change to make the database match the SQLModel classes (our tables only)."""

    def ours(name: str | None, type_: str, parent_names: object) -> bool:
        return type_ != "table" or name in ALL_TABLES

    with eng.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "include_name": ours})
        return list(compare_metadata(context, SQLModel.metadata))


def _create_all(eng: Engine, models: tuple[type[SQLModel], ...]) -> None:
    """What the code did before migrations."""
    SQLModel.metadata.create_all(eng, tables=[m.__table__ for m in models])  # type: ignore[attr-defined]


def test_models_declare_exactly_the_migrated_tables() -> None:
    assert {m.__tablename__ for m in MODELS} == INITIAL_TABLES  # type: ignore[attr-defined]
    assert {m.__tablename__ for m in MODELS + SERVICE_MODELS} == ALL_TABLES  # type: ignore[attr-defined]


def test_head_revision_is_alembics_head() -> None:
    """HEAD_REVISION lets a database at head be recognised without Alembic: it must name the newest file."""
    assert head_revision() == db.alembic_head()
    versions = sorted(p.name for p in (db.MIGRATIONS / "versions").glob("[0-9]*.py"))
    assert versions[0].startswith(INITIAL_REVISION) and versions[-1].startswith(head_revision())


def test_fresh_database_upgrades_to_tables_matching_the_models(plain: Engine) -> None:
    assert _revision(plain) is None
    result = upgrade(plain)
    assert (result.before, result.revision, result.adopted) == (None, head_revision(), False)
    with plain.connect() as conn:
        assert _tables(conn) == ALL_TABLES | {"alembic_version"}
    assert _schema_diffs(plain) == []
    assert _revision(plain) == head_revision()


def test_the_comparison_sees_a_difference(plain: Engine) -> None:
    """The schema check above can fail: a column missing from the database shows."""
    upgrade(plain)
    with plain.begin() as conn:
        conn.execute(text("DROP TABLE audit_signed_head"))
        conn.execute(text("CREATE TABLE audit_signed_head (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL)"))
    diffs = _schema_diffs(plain)
    assert any(d[0] == "add_column" and d[3].name == "signature" for d in diffs if isinstance(d, tuple))


def test_migrated_and_create_all_databases_have_the_same_schema(db_url: str, plain: Engine) -> None:
    """A database adopted from create_all and one made by the migrations compare equal to the models."""
    _create_all(plain, MODELS)
    before = _schema_diffs(plain)  # create_all knew only the initial tables: the service's are missing
    assert {d[1].name for d in before if isinstance(d, tuple) and d[0] == "add_table"} == SERVICE_TABLES
    assert all(isinstance(d, tuple) and d[0] in ("add_table", "add_index") for d in before)
    upgrade(plain)
    assert _schema_diffs(plain) == []


def test_create_all_database_is_adopted_with_its_rows(plain: Engine) -> None:
    _create_all(plain, MODELS)
    record(plain, actor="node", action="policy.check", resource="r1")
    assert _revision(plain) is None

    result = upgrade(plain)

    assert (result.before, result.revision, result.adopted) == (None, head_revision(), True)
    with Session(plain) as session:
        assert [e.resource for e in session.exec(select(AuditEntry))] == ["r1"]
    with plain.connect() as conn:
        assert _tables(conn) == ALL_TABLES | {"alembic_version"}
    assert _schema_diffs(plain) == []


def test_create_all_database_with_only_the_audit_tables_gets_the_rest(plain: Engine) -> None:
    """create_audit_engine made only the audit tables; the node's ledger tables came later, if ever."""
    _create_all(plain, AUDIT_MODELS)
    record(plain, actor="node", action="policy.check", resource="r1")

    eng = create_audit_engine(plain.url.render_as_string(hide_password=False))
    try:
        assert _revision(eng) == head_revision()
        with eng.connect() as conn:
            assert _tables(conn) == ALL_TABLES | {"alembic_version"}
        with Session(eng) as session:
            assert session.exec(select(AuditEntry.resource)).all() == ["r1"]
    finally:
        eng.dispose()
    assert _schema_diffs(plain) == []


def test_upgrade_twice_is_a_no_op(plain: Engine) -> None:
    first = upgrade(plain)
    record(plain, actor="node", action="policy.check", resource="r1")
    second = upgrade(plain)
    assert first.changed and not second.changed
    assert second.before == second.revision == head_revision()
    with plain.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
            head_revision()
        ]
        assert conn.execute(text("SELECT count(*) FROM audit_entry")).scalar_one() == 1


def test_0003_drops_the_link_indexes_and_keeps_the_chain(plain: Engine) -> None:
    """A database at 0002 with a signed chain: after the upgrade the rows are all there, the chain
    verifies, and ``prev`` and ``hash`` have no unique index left (the primary key stays)."""
    with plain.begin() as conn:
        command.upgrade(db.alembic_config(conn), "0002")
    for i in range(3):
        record(plain, actor="node", action="policy.check", resource=f"r{i}")
    key = Ed25519PrivateKey.generate()
    sign_current_head(plain, key)
    assert {tuple(c["column_names"]) for c in inspect(plain).get_unique_constraints("audit_entry")} == {
        ("prev",),
        ("hash",),
    }

    assert upgrade(plain).revision == head_revision()

    assert inspect(plain).get_unique_constraints("audit_entry") == []
    assert inspect(plain).get_pk_constraint("audit_entry")["constrained_columns"] == ["seq"]
    with Session(plain) as session:
        report = verify_chain(session, [public_key_text(key.public_key())])
    assert report.ok and report.checked == 3


def test_downgrade_and_upgrade_again(plain: Engine) -> None:
    upgrade(plain)
    with plain.begin() as conn:
        command.downgrade(db.alembic_config(conn), "base")
    with plain.connect() as conn:
        assert _tables(conn) == {"alembic_version"}
    assert _revision(plain) is None
    assert upgrade(plain).revision == head_revision()
    assert _schema_diffs(plain) == []


def test_unknown_revision_is_refused(plain: Engine, db_url: str) -> None:
    upgrade(plain)
    with plain.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaError, match="9999"):
        upgrade(plain)
    result = runner.invoke(db_app, ["upgrade", "--db", db_url])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "9999" in result.stderr
    current = runner.invoke(db_app, ["current", "--db", db_url])
    assert current.exit_code == 0 and "9999" in current.stdout and "does not know" in current.stdout


def test_ensure_schema_runs_alembic_once_per_database(
    db_url: str, plain: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    migrate = db._migrate

    def counting(eng: Engine) -> db.Upgrade:
        calls.append(str(eng.url))
        return migrate(eng)

    monkeypatch.setattr(db, "_migrate", counting)
    engines = [create_audit_engine(db_url) for _ in range(20)]
    try:
        assert len(calls) == 1
        assert _revision(engines[-1]) == head_revision()
        started = time.perf_counter()
        for _ in range(1000):
            ensure_schema(engines[-1])
        per_call = (time.perf_counter() - started) / 1000
        assert per_call < 1e-3, f"ensure_schema at head took {per_call * 1e6:.0f} µs"
        assert len(calls) == 1
    finally:
        for eng in engines:
            eng.dispose()


def test_a_new_sqlite_file_at_the_same_path_is_migrated(tmp_path: Path) -> None:
    """The per-process cache knows a SQLite database by its file, not only its path."""
    path = tmp_path / "node.db"
    url = f"sqlite:///{path}"
    create_audit_engine(url).dispose()
    path.rename(tmp_path / "old.db")  # the old file lives on, so the new one cannot reuse its inode
    for extra in ("-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    sqlite3.connect(path).close()  # an empty database at the same path
    eng = create_audit_engine(url)
    try:
        with eng.connect() as conn:
            assert AuditEntry.__tablename__ in _tables(conn)
    finally:
        eng.dispose()


def test_cli_upgrade_then_current(db_url: str, plain: Engine) -> None:
    before = runner.invoke(db_app, ["current", "--db", db_url])
    assert before.exit_code == 0, before.stderr
    assert "no tables yet" in before.stdout or "no database yet" in before.stdout  # SQLite: no file yet

    first = runner.invoke(db_app, ["upgrade", "--db", db_url])
    assert first.exit_code == 0, first.stderr
    assert f"at revision {head_revision()} (head)" in first.stdout
    assert "upgraded from no tables" in first.stdout
    assert first.stderr == ""

    again = runner.invoke(db_app, ["upgrade", "--db", db_url])
    assert again.exit_code == 0 and "nothing to do" in again.stdout

    now = runner.invoke(db_app, ["current", "--db", db_url])
    assert now.exit_code == 0
    assert now.stdout.strip().endswith(f"at revision {head_revision()} (head)")
    assert _revision(plain) == head_revision()


def test_cli_adopts_a_create_all_database(db_url: str, plain: Engine) -> None:
    _create_all(plain, MODELS)
    current = runner.invoke(db_app, ["current", "--db", db_url])
    assert current.exit_code == 0 and "5 of 5 tables made before migrations" in current.stdout
    result = runner.invoke(db_app, ["upgrade", "--db", db_url])
    assert result.exit_code == 0, result.stderr
    assert "adopted" in result.stdout and f"at revision {head_revision()} (head)" in result.stdout


def test_cli_current_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "none.db"
    result = runner.invoke(db_app, ["current", "--db", f"sqlite:///{path}"])
    assert result.exit_code == 0 and "no database yet" in result.stdout
    assert not path.exists()


def test_cli_default_database_is_database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "from-env.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    result = runner.invoke(db_app, ["upgrade"])
    assert result.exit_code == 0, result.stderr
    assert str(path) in result.stdout and path.is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["upgrade", "--db", "not a url"], "not a database URL"),
        (["current", "--db", "not a url"], "not a database URL"),
        (["upgrade", "--db", ""], "--db is empty"),
        (["upgrade", "--db", "nosuchdialect://x/y"], "nosuchdialect"),
        (["upgrade", "--db", "postgresql+psycopg://fc:s3cret@127.0.0.1:1/x"], "127.0.0.1:1"),
        (["current", "--db", "postgresql+psycopg://fc:s3cret@127.0.0.1:1/x"], "127.0.0.1:1"),
    ],
)
def test_cli_errors_are_one_line_exit_2(args: list[str], expected: str) -> None:
    result = runner.invoke(db_app, args)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expected in lines[0]
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


def test_cli_empty_database_url_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", " ")
    result = runner.invoke(db_app, ["current"])
    assert result.exit_code == 2 and result.stderr.startswith("error: DATABASE_URL is set but empty")


WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import policies.audit, policies.db
    url, go, how = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    Path(f"{go}.ready.{sys.argv[4]}").touch()
    while not go.exists():
        time.sleep(0.002)
    if how == "engine":
        engine = policies.audit.create_audit_engine(url)
        policies.audit.record(engine, actor="node", action="test", resource=str(Path(sys.argv[0])))
        engine.dispose()
        print("ok")
    else:
        print(policies.db.upgrade(url).revision)
    """
)


def test_concurrent_upgrades_of_one_database_all_succeed(db_url: str, plain: Engine, tmp_path: Path) -> None:
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, db_url, str(go), how, str(n)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, how in enumerate(("engine", "upgrade") * 2)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.ready.*"))) < len(workers) and time.monotonic() < deadline:
        time.sleep(0.01)  # all imported and waiting at the line, so that they start together
    go.touch()
    results = [(w.wait(timeout=120), *w.communicate()) for w in workers]
    for code, out, err in results:
        assert code == 0, err
        assert out.strip() in ("ok", head_revision()), out
        assert err == ""
    assert _revision(plain) == head_revision()
    with plain.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
        assert conn.execute(text("SELECT count(*) FROM audit_entry")).scalar_one() == 2
    assert _schema_diffs(plain) == []


def test_policies_alone_and_quiet(tmp_path: Path) -> None:
    """Upgrading imports nothing outside policies/, and Alembic's INFO lines stay off the output
    even where the application logs INFO."""
    url = f"sqlite:///{tmp_path / 'quiet.db'}"
    script = textwrap.dedent(
        f"""
        import logging, sys
        logging.basicConfig(level=logging.INFO)
        from policies.db_cli import db_app
        try:
            db_app(["upgrade", "--db", {url!r}])
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("federation", "clients", "coordinator"))
        print("loaded:", loaded)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout
    assert "at revision" in done.stdout
    assert done.stderr == ""
