"""The scoring service's tables: the model registry, member keys, query records; audit details.

``model_version`` holds every registered model version and ``model_activation`` every
promotion and rollback (the latest row per federation is the active version);
``api_key`` holds the hash of each member token; ``query_record`` the readable record of
each scoring query, kept as long as the federation policy's retention says (the audit
chain keeps only digests). ``audit_entry.detail`` carries an entry's structured details
(JSON; hashed only when not empty, so entries written before it verify unchanged).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def _text(name: str, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(), nullable=nullable)


def _int(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), nullable=False)


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("audit_entry")}
    if "detail" not in columns:  # an adopted create_all database of a newer model may have it
        op.add_column("audit_entry", sa.Column("detail", sa.String(), nullable=False, server_default=""))
    op.create_table(
        "model_version",
        _int("id"),
        _text("federation"),
        _int("version"),
        _text("run_id"),
        _text("model_path"),
        _text("model_sha256"),
        _text("schema_name"),
        _text("schema_version"),
        _text("schema_sha256"),
        _text("federation_policy_sha256"),
        _text("institutions"),  # JSON: [{"name", "policy_sha256"}]
        _int("rounds"),
        _text("metrics"),  # JSON: {"global": {...}, "institutions": {name: {...}}}
        sa.Column("epsilon", sa.Float(), nullable=True),
        _text("created_at"),
        sa.Column("demo", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("federation", "version"),
        sa.UniqueConstraint("federation", "run_id"),
    )
    op.create_table(
        "model_activation",
        _int("id"),
        _text("federation"),
        _int("version"),
        _text("action"),  # promote | rollback
        _text("actor"),
        _text("ts"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_model_activation_federation", "model_activation", ["federation", "id"])
    op.create_table(
        "api_key",
        _int("id"),
        _text("key_id"),
        _text("token_sha256"),
        _text("member"),
        _text("role"),
        _text("created_at"),
        _text("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_id"),
    )
    op.create_table(
        "query_record",
        _int("id"),
        _text("ts"),
        _text("member"),
        _text("action"),
        _text("purpose"),
        _text("consent_reference"),
        _text("model_version"),
        _text("input_sha256"),
        _int("applicants"),
        _int("audit_seq"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_query_record_member_ts", "query_record", ["member", "ts"])


def downgrade() -> None:
    op.drop_index("ix_query_record_member_ts", "query_record")
    op.drop_table("query_record")
    op.drop_table("api_key")
    op.drop_index("ix_model_activation_federation", "model_activation")
    op.drop_table("model_activation")
    op.drop_table("model_version")
    with op.batch_alter_table("audit_entry") as batch:
        batch.drop_column("detail")
