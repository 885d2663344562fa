"""How every ``fedcredit`` command reports an expected failure: one line on stderr, exit code 2."""

from __future__ import annotations

import typer
from sqlalchemy.exc import SQLAlchemyError

from policies.audit import describe_db_error, mask_passwords


def error_line(exc: BaseException) -> str:
    """``exc`` as one line fit to print: a database error as the driver's first line (never the
    SQL or its parameters), and any password in a URL masked."""
    if isinstance(exc, SQLAlchemyError):
        return f"database: {describe_db_error(exc)}"
    text = ""
    for line in (raw.strip().removeprefix("- ") for raw in str(exc).splitlines()):
        if line:
            text += line if not text else (" " if text.endswith(":") else "; ") + line
    return mask_passwords(text or type(exc).__name__)


def fail(exc: BaseException | str) -> typer.Exit:
    """Print ``error: ...`` as one line on stderr (never wrapped, never markup); raise what it returns."""
    typer.echo(f"error: {exc if isinstance(exc, str) else error_line(exc)}", err=True)
    return typer.Exit(code=2)
