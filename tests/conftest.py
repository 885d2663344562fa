from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from flwr.supercore.task_identity import TaskIdentity
from sqlalchemy.engine import Engine

from federation.datasets.scenarios import DATA_DIR_ENV
from federation.datasets.synthetic import generate_sme
from federation.schema import Schema, resolve_schema
from policies.audit import create_audit_engine


@pytest.fixture(scope="session")
def sme_schema() -> Schema:
    return resolve_schema("sme")


@pytest.fixture(scope="session")
def sme_frame() -> pd.DataFrame:
    return generate_sme(3000, seed=11)


@pytest.fixture
def write_csv(tmp_path: Path):
    def write(frame: pd.DataFrame, name: str = "data.csv") -> Path:
        path = tmp_path / name
        frame.to_csv(path, index=False)
        return path

    return write


@pytest.fixture(scope="session")
def fate_dir() -> Path:
    value = os.environ.get(DATA_DIR_ENV)
    if not value or not Path(value).is_dir():
        pytest.skip(f"UCI/FATE data not available: set {DATA_DIR_ENV}")
    return Path(value)


@pytest.fixture
def task_identity() -> Iterator[None]:
    """Flower stamps new messages with the running task's identity; a test has none."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)  # type: ignore[attr-defined]
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved  # type: ignore[attr-defined]


POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
POSTGRES_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def _postgres_available() -> bool:
    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a schema of its own on the running PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
        return
    if not _postgres_available():
        pytest.fail("PostgreSQL at 127.0.0.1:5432 (database test) is not running")
    schema = f"fedcredit_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """The audit database on ``db_url`` (SQLite and PostgreSQL)."""
    eng = create_audit_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session", autouse=True)
def _own_var_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test writes to the developer's var/ (audit database, keys, runs) or $DATABASE_URL."""
    saved = {k: os.environ.get(k) for k in ("FEDCREDIT_VAR_DIR", "DATABASE_URL")}
    os.environ["FEDCREDIT_VAR_DIR"] = str(tmp_path_factory.mktemp("var"))
    os.environ.pop("DATABASE_URL", None)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts (each in its own session): all stopped by PID, with their groups."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in reversed(started):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
