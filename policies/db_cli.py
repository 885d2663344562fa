"""``fedcredit db``: bring the audit database's tables to the newest revision, or say where they are."""

from __future__ import annotations

import typer
from sqlalchemy.engine import Engine, make_url

from policies.audit import AuditDatabaseError, mask_url, open_audit_readonly
from policies.cli_options import DbOption, database, database_errors
from policies.db import (
    INITIAL_TABLES,
    current_revision,
    engine_for,
    head_revision,
    known_revision,
    legacy_tables,
    upgrade,
)

db_app = typer.Typer(
    help="The audit database's tables: Alembic migrations (SQLite or PostgreSQL).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Run the migrations to the newest revision (creating the database and its tables when missing).

    A database whose tables were made before migrations is adopted. Safe to run while nodes run."""
    url = database(db)
    with database_errors(url, "upgrading the database"):
        result = upgrade(url)
    where = f"audit database {mask_url(url)}"
    if not result.changed:
        typer.echo(f"{where}: at revision {result.revision} (head), nothing to do")
    elif result.adopted:
        typer.echo(f"{where}: adopted tables made before migrations; at revision {result.revision} (head)")
    else:
        typer.echo(
            f"{where}: upgraded from {result.before or 'no tables'}; at revision {result.revision} (head)"
        )


def _reader(url: str) -> Engine:
    """An engine that creates nothing: a SQLite file opened read-only, else a plain engine (only reads)."""
    if make_url(url).get_backend_name() == "sqlite":
        return open_audit_readonly(url)
    return engine_for(url)


@db_app.command("current")
def db_current(db: DbOption = None) -> None:
    """Say which revision the database is at (read-only: creates nothing)."""
    url = database(db)
    where = f"audit database {mask_url(url)}"
    head = head_revision()
    with database_errors(url, "reading the database's revision"):
        try:
            engine = _reader(url)
        except AuditDatabaseError:
            typer.echo(f"{where}: no database yet; `fedcredit db upgrade` creates it at revision {head}")
            return
        try:
            with engine.connect() as connection:
                revision = current_revision(connection)
                present = legacy_tables(connection) if revision is None else set()
        finally:
            engine.dispose()
    if revision == head:
        typer.echo(f"{where}: at revision {revision} (head)")
    elif revision is not None and known_revision(revision):
        typer.echo(f"{where}: at revision {revision}, behind head {head}: run `fedcredit db upgrade`")
    elif revision is not None:
        typer.echo(
            f"{where}: at revision {revision}, which this version of fedcredit does not know "
            f"(its head is {head})"
        )
    elif present:
        typer.echo(
            f"{where}: no revision; {len(present)} of {len(INITIAL_TABLES)} tables made before "
            "migrations: `fedcredit db upgrade` adopts them"
        )
    else:
        typer.echo(f"{where}: no tables yet; `fedcredit db upgrade` creates them at revision {head}")
