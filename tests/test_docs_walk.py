"""The walk in docs/data.md, from a CSV of one's own to a scored applicant, run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WALK = "## From your own CSV to a scored applicant"
pytestmark = pytest.mark.slow


def walk_commands() -> str:
    text = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
    section = text[text.index(WALK) :].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL))


def test_the_own_data_walk_runs_as_written(tmp_path: Path) -> None:
    script = walk_commands()
    assert "fedcredit simulate --schema my_schema.toml" in script and "fedcredit score" in script
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "schema my_shops 1.0.0" in done.stdout
    assert "probability of default" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    # nothing was written into the institutions' own folders
    assert sorted(p.name for p in (tmp_path / "lenders" / "national_bank").iterdir()) == [
        "holdout.csv",
        "train.csv",
    ]
    # the model knows its schema by name and version: the built-in sme, same columns, is refused
    other = subprocess.run(
        ["fedcredit", "score", "applicants.csv", "--schema", "sme"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.returncode == 2
    lines = other.stderr.strip().splitlines()
    assert len(lines) == 1 and "trained on schema my_shops 1.0.0" in lines[0], other.stderr
    # without --schema, the model's own schema file is asked for, in one line
    missing = subprocess.run(
        ["fedcredit", "score", "applicants.csv"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "--schema" in missing.stderr and "Traceback" not in missing.stderr
