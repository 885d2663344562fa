"""The database's tables come from the Alembic migrations in :mod:`policies.migrations`.

:func:`ensure_schema` is what every writer calls on an engine it made (see
:func:`policies.audit.create_audit_engine`): it brings the database to the head
revision once per database and process, and returns at once afterwards.
:func:`upgrade` always looks at the database (``fedcredit db upgrade``).

An upgrade runs in one transaction that first takes the schema lock (a
transaction-scoped advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite),
then reads the revision: processes that start at once queue, and those after the
first find the database at head. A database made by ``create_all`` before there
were migrations (tables, no ``alembic_version``) is adopted: stamped at the
initial revision when it holds all of that revision's tables; otherwise the
initial revision creates only the missing ones.

Alembic's environment is set up in code (no alembic.ini) and never configures
logging; its INFO lines stay quiet unless the application asks for them. Alembic
is imported only when a database needs migrating: one at head is recognised by
reading ``alembic_version``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
INITIAL_REVISION = "0001"
# the newest file in migrations/versions (tests/policies/test_migrations.py checks it against Alembic):
# a database at head is recognised without importing Alembic, which costs every process half a second
HEAD_REVISION = "0003"
VERSION_TABLE = "alembic_version"
# the tables of the initial revision, as create_all made them before migrations
INITIAL_TABLES = frozenset(
    {"audit_entry", "audit_signed_head", "node_run", "node_contribution", "privacy_ledger"}
)
# the tables of revision 0002: the scoring service's registry, member keys and query records
SERVICE_TABLES = frozenset({"model_version", "model_activation", "api_key", "query_record"})
ALL_TABLES = INITIAL_TABLES | SERVICE_TABLES
SCHEMA_LOCK_KEY = 0x46454453  # "FEDS": not the audit chain's lock
CONNECT_TIMEOUT_S = 10  # PostgreSQL: how long to wait for a connection
SQLITE_BUSY_S = 30  # SQLite: how long to wait for another process's write

# Alembic logs at INFO from the moment it is imported: quiet unless the application chose a level for it
if logging.getLogger("alembic").level == logging.NOTSET:
    logging.getLogger("alembic").setLevel(logging.WARNING)

_at_head: set[tuple[object, ...]] = set()


class SchemaError(Exception):
    """The database's revision is one this version does not know (made by a newer version?), or
    Alembic could not migrate it."""


@dataclass(frozen=True)
class Upgrade:
    """What :func:`upgrade` found and left: ``before`` is None for a database without a revision."""

    before: str | None
    revision: str
    adopted: bool = False  # tables made by create_all before migrations, now under Alembic

    @property
    def changed(self) -> bool:
        return self.before != self.revision


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, in code: the migrations package, and the connection to run on."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@cache
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def alembic_head() -> str:
    """The newest revision, as Alembic reads it from the migration files."""
    head = _script().get_current_head()
    assert head is not None, "no migrations"
    return head


def head_revision() -> str:
    """The newest revision this version knows."""
    return HEAD_REVISION


def known_revision(revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return _script().get_revision(revision) is not None
    except CommandError:
        return False


def current_revision(connection: Connection) -> str | None:
    """The database's revision; None when it has none (empty, or made by create_all). Reads only."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(rows) > 1:
        raise SchemaError(f"the database is at several revisions at once ({', '.join(sorted(rows))})")
    return rows[0] if rows else None


def legacy_tables(connection: Connection) -> set[str]:
    """The initial revision's tables that are present (they matter only where there is no revision)."""
    return set(inspect(connection).get_table_names()) & INITIAL_TABLES


def _lock(connection: Connection) -> None:
    """Take the schema lock for the rest of ``connection``'s transaction."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
    elif dialect == "sqlite" and not getattr(connection.connection.dbapi_connection, "in_transaction", True):
        # engines like create_audit_engine's began with BEGIN IMMEDIATE already; a plain one began nothing
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _migrate(engine: Engine) -> Upgrade:
    head = head_revision()
    with engine.begin() as connection:
        _lock(connection)
        before = current_revision(connection)
        if before == head:
            return Upgrade(before, head)
        if before is not None and not known_revision(before):
            raise SchemaError(
                f"the database is at revision {before}, which this version of fedcredit does not know "
                f"(its newest is {head}): was it upgraded by a newer version?"
            )
        adopted = _run_alembic(connection, before)
        after = current_revision(connection)
    assert after is not None
    return Upgrade(before, after, adopted)


def _run_alembic(connection: Connection, before: str | None) -> bool:
    """Migrate to head in ``connection``'s transaction; whether create_all's tables were adopted."""
    from alembic import command
    from alembic.util import CommandError

    config = alembic_config(connection)
    adopted = False
    try:
        if before is None:
            present = legacy_tables(connection)
            adopted = bool(present)
            if present == INITIAL_TABLES:
                command.stamp(config, INITIAL_REVISION)
        command.upgrade(config, "head")
    except CommandError as exc:
        raise SchemaError(f"migrating failed: {exc}") from exc
    return adopted


def _cache_key(engine: Engine) -> tuple[object, ...] | None:
    """The database behind ``engine`` (a SQLite file also by its inode: a new file is a new database)."""
    url = engine.url
    rendered = url.render_as_string(hide_password=False)
    if url.get_backend_name() != "sqlite":
        return (rendered,)
    name = url.database or ""
    if name in ("", ":memory:"):
        return None
    try:
        stat = os.stat(name)
    except OSError:
        return None
    return (rendered, stat.st_dev, stat.st_ino)


def _migrate_when_free(engine: Engine) -> Upgrade:
    """:func:`_migrate`, trying again while a new SQLite file is locked by another process.

    The first connection to a new file switches it to write-ahead logging (see
    :func:`policies.audit.create_audit_engine`), which SQLite refuses at once, without
    waiting, while another process is writing to it: the other process is creating the tables."""
    deadline = time.monotonic() + SQLITE_BUSY_S
    pause = 0.01
    while True:
        try:
            return _migrate(engine)
        except OperationalError as exc:
            locked = engine.dialect.name == "sqlite" and "database is locked" in str(exc.orig)
            if not locked or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def ensure_schema(engine: Engine) -> None:
    """The database behind ``engine`` at the head revision; checked once per database and process."""
    key = _cache_key(engine)
    if key is not None and key in _at_head:
        return
    _migrate_when_free(engine)
    key = key or _cache_key(engine)
    if key is not None:
        _at_head.add(key)


def engine_for(url: str) -> Engine:
    """An engine for an upgrade from the command line, set up as :func:`policies.audit.create_audit_engine`
    sets up its own (SQLite: write-ahead log, transactions that take the write lock at BEGIN; the
    file's folder is created), without a pool."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend != "sqlite":
        connect_args: dict[str, object] = {}
        libpq = backend == "postgresql" and parsed.get_driver_name() in ("psycopg", "psycopg2")
        if libpq and "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        return create_engine(parsed, poolclass=NullPool, connect_args=connect_args)
    name = parsed.database or ""
    if name not in ("", ":memory:") and not name.startswith("file:"):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
    return serialize_sqlite_writes(
        create_engine(parsed, poolclass=NullPool, connect_args={"timeout": SQLITE_BUSY_S})
    )


def serialize_sqlite_writes(engine: Engine) -> Engine:
    """A SQLite engine whose transactions take the write lock at BEGIN (appends never interleave),
    on a write-ahead log with one durable fsync per commit."""

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=FULL")

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def upgrade(engine_or_url: Engine | str) -> Upgrade:
    """Run the migrations to head (always looking at the database); what was there before, what is now."""
    if isinstance(engine_or_url, Engine):
        result = _migrate_when_free(engine_or_url)
        key = _cache_key(engine_or_url)
        if key is not None:
            _at_head.add(key)
        return result
    engine = engine_for(engine_or_url)
    try:
        return upgrade(engine)
    finally:
        engine.dispose()
