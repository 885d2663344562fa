"""The tables as ``SQLModel.metadata.create_all`` made them before migrations.

The audit chain (``audit_entry``, ``audit_signed_head``), the node's runs and
contributions (``node_run``, ``node_contribution``) and its privacy ledger
(``privacy_ledger``). A table that is already there is left as it is: a database
made by ``create_all`` may hold only some of them (an audit database that never
saw a node's ledger), and is adopted by creating the rest.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _text(name: str) -> sa.Column[str]:
    return sa.Column(name, sa.String(), nullable=False)


def _int(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), nullable=False)


def _float(name: str, nullable: bool = False) -> sa.Column[float]:
    return sa.Column(name, sa.Float(), nullable=nullable)


def _tables() -> dict[str, list[sa.schema.SchemaItem]]:
    return {
        "audit_entry": [
            _int("seq"),
            *(
                _text(name)
                for name in (
                    "ts",
                    "actor",
                    "action",
                    "resource",
                    "decision",
                    "rules",
                    "policy_sha256",
                    "input_sha256",
                    "prev",
                    "hash",
                )
            ),
            sa.PrimaryKeyConstraint("seq"),
            sa.UniqueConstraint("prev"),
            sa.UniqueConstraint("hash"),
        ],
        "audit_signed_head": [
            _int("id"),
            _int("seq"),
            _text("hash"),
            _text("signed_by"),
            _text("signature"),
            _text("ts"),
            sa.PrimaryKeyConstraint("id"),
        ],
        "node_run": [
            _int("id"),
            _text("institution"),
            _text("run_id"),
            _text("request_sha256"),
            _int("rounds"),
            _float("epsilon_planned", nullable=True),
            _text("first_seen"),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("institution", "run_id"),
        ],
        "node_contribution": [
            _int("id"),
            _text("institution"),
            _text("run_id"),
            _text("kind"),
            _int("round"),
            _text("ts"),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("institution", "run_id", "kind", "round"),
        ],
        "privacy_ledger": [
            _int("id"),
            _text("institution"),
            _text("run_id"),
            _int("round"),
            _float("epsilon_planned"),
            _float("epsilon_spent"),
            _float("delta"),
            _float("noise_multiplier"),
            _float("sample_rate"),
            _int("steps"),
            _text("ts"),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("institution", "run_id", "round"),
        ],
    }


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name, items in _tables().items():
        if name not in existing:
            op.create_table(name, *items)


def downgrade() -> None:
    for name in reversed(_tables()):
        op.drop_table(name)
