from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from policies.demo_keys import EXAMPLES

KEYS = EXAMPLES / "keys"


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A private copy of the signed example policies and demo keys."""
    target = tmp_path / "examples"
    shutil.copytree(EXAMPLES, target)
    return target


def pub(name: str) -> str:
    return (KEYS / f"demo_{name}.pub").read_text().splitlines()[-1]
