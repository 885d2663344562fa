from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

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
