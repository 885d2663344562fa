"""What the scoring service needs to start: the signed federation policy, keys, the database."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from policies.settings import FedCreditSettings

MIB = 1024 * 1024


class ServiceSettings(FedCreditSettings):
    """Settings of ``create_app``; from arguments, else ``FEDCREDIT_*`` variables.

    The database is the coordinator's (``DATABASE_URL``, else the embedded SQLite file): the
    model registry, the member tokens and the audit log the queries are appended to.
    """

    model_config = SettingsConfigDict(
        env_prefix="FEDCREDIT_", extra="ignore", frozen=True, populate_by_name=True
    )

    federation_policy: Path
    trust: Path  # the key(s) trusted to sign the federation policy
    coordinator_key: Path  # signs the audit log's head after each committed batch of queries
    schema_ref: str | None = None  # schema name or file; default: the policy's, if FedCredit ships it
    audit_trust: Path | None = None  # more keys an auditor's chain verification trusts
    institution_policies: Path | None = None  # a folder of institution policies auditors may review
    allow_demo_keys: bool = False
    key_cache_seconds: float = Field(default=2.0, ge=0)  # a revoked token stops working within this
    model_poll_seconds: float = Field(default=5.0, gt=0)  # a promoted version is picked up within this
    max_body_bytes: int = Field(default=16 * MIB, gt=0)
    audit_batch: int = Field(default=256, ge=1)
