"""Options the auditor's command groups share: which database, which keys to trust."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from policies.audit import AuditDatabaseError, database_url, describe_db_error, mask_url
from policies.cli_errors import fail
from policies.db import SchemaError

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Audit database URL. Default: $DATABASE_URL, else fedcredit.db in $FEDCREDIT_VAR_DIR "
        "or the project's var/ folder.",
        show_default=False,
    ),
]
TrustOption = Annotated[Path, typer.Option(help="Trusted public key file, or a folder of .pub files.")]


def database(db: str | None) -> str:
    """``--db``, else ``$DATABASE_URL``, else the default; never an empty one, never one that does not parse."""
    if db is not None:
        if not db.strip():
            raise fail("--db is empty: name the audit database URL (or leave --db out for the default)")
        url = db
    elif "DATABASE_URL" in os.environ and not os.environ["DATABASE_URL"].strip():
        raise fail(
            "DATABASE_URL is set but empty: set it to the audit database URL, or unset it for the default"
        )
    else:
        url = database_url()
    try:
        make_url(url)
    except (ArgumentError, ValueError):
        raise fail(
            f"not a database URL: {mask_url(url)} (e.g. sqlite:////path/fedcredit.db or "
            "postgresql+psycopg://user@host/db)"
        ) from None
    return url


@contextmanager
def database_errors(url: str, what: str) -> Iterator[None]:
    """A database (or file) failure as one line: what failed and where, password masked, exit 2."""
    try:
        yield
    except AuditDatabaseError as exc:
        raise fail(exc) from None
    except SchemaError as exc:
        raise fail(f"{what} failed at {mask_url(url)}: {exc}") from None
    except (SQLAlchemyError, OSError) as exc:
        raise fail(f"{what} failed at {mask_url(url)}: {describe_db_error(exc, url)}") from None
