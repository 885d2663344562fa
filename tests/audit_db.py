"""A session on a test's audit database that leaves no connection open behind it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlmodel import Session

from policies.audit import create_audit_engine


@contextlib.contextmanager
def session_on(url: str) -> Iterator[Session]:
    """A session on ``url``; its engine is disposed afterwards. An engine left to the garbage
    collector keeps its pooled PostgreSQL connection open until then (or for good, once the
    service under test has frozen the collector's view at start-up)."""
    engine = create_audit_engine(url)
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()
