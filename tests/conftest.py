from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from flwr.supercore.task_identity import TaskIdentity

from federation.scenarios import DATA_DIR_ENV
from federation.schema import Schema, resolve_schema
from federation.synthetic import generate_sme


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
