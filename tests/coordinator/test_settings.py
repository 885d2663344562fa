"""One settings object per role, one rule per default, absolute paths from any folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from clients.settings import NodeSettings
from coordinator.settings import coordinator_settings
from policies.audit import database_url, var_dir


def test_every_folder_finds_the_same_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDCREDIT_VAR_DIR", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    first = coordinator_settings()
    monkeypatch.chdir(Path(__file__).parent)
    second = coordinator_settings()
    project_var = Path(__file__).resolve().parents[2] / "var"
    assert first.var_dir == second.var_dir == project_var == var_dir()
    assert first.runs_dir == project_var / "runs"
    assert database_url() == f"sqlite:///{project_var / 'fedcredit.db'}" == second.audit_url
    monkeypatch.setenv("FEDCREDIT_VAR_DIR", "state")  # a relative value is made absolute once, when read
    assert coordinator_settings().var_dir == Path(__file__).parent / "state"


def test_database_url_and_its_empty_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://auditor@127.0.0.1/test")
    assert coordinator_settings().audit_url == database_url() == "postgresql+psycopg://auditor@127.0.0.1/test"
    monkeypatch.setenv("DATABASE_URL", "")
    assert coordinator_settings().audit_url.startswith("sqlite:///")


def test_a_node_keeps_its_own_log_never_the_coordinators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://coordinator@127.0.0.1/test")
    settings = NodeSettings()
    assert (
        settings.node_audit_url("city_bank")
        == f"sqlite:///{settings.var_dir / 'audit' / 'node-city_bank.db'}"
    )
    assert (
        settings.node_audit_url("city_bank", {"audit-db": "sqlite:////srv/node.db"})
        == "sqlite:////srv/node.db"
    )


@pytest.mark.parametrize("value", ["0", "-1", "fast"])
def test_a_bad_polling_interval_is_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDCREDIT_POLL_SECONDS", value)
    with pytest.raises(ValidationError, match="poll_seconds"):
        coordinator_settings()
