"""Where FedCredit keeps its files and its audit log: the one rule for each default.

Every role's settings (coordinator, node) extend :class:`FedCreditSettings`; the
functions in ``policies`` take what they need as arguments and fall back to these.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_VAR = Path(__file__).resolve().parents[1] / "var"


class FedCreditSettings(BaseSettings):
    """``FEDCREDIT_VAR_DIR`` (default: the project's ``var/``) and ``DATABASE_URL`` (default: the
    SQLite file ``fedcredit.db`` in it). Paths are absolute, so every folder finds the same files."""

    model_config = SettingsConfigDict(env_prefix="FEDCREDIT_", extra="ignore", frozen=True)

    var_dir: Path = PROJECT_VAR
    database_url: str = Field(default="", validation_alias=AliasChoices("DATABASE_URL"))

    @field_validator("var_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def audit_url(self) -> str:
        """``DATABASE_URL`` when set and non-empty, else the embedded SQLite file."""
        return self.database_url or f"sqlite:///{self.var_dir / 'fedcredit.db'}"

    @property
    def keys_dir(self) -> Path:
        return self.var_dir / "keys"
