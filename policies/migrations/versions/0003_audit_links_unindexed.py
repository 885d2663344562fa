"""The audit chain's ``prev`` and ``hash`` columns lose their unique indexes.

Each was a B-tree over random 64-character keys: every appended entry wrote to two
random index pages, which made up most of what a commit wrote to disk (and most of
its checkpoints). Neither guarded anything the chain does not guard otherwise: an
appender takes the chain lock and numbers its entries after the last, and ``seq`` is
the primary key, so a second appender after the same head is refused there; a changed
link or hash is what chain verification finds.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

LINKS = ("prev", "hash")
# SQLite keeps these constraints unnamed: a naming convention names them for batch mode
NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _unique_on_links() -> dict[str, str | None]:
    """The unique constraints on one link column each: column -> constraint name."""
    found = sa.inspect(op.get_bind()).get_unique_constraints("audit_entry")
    return {
        c["column_names"][0]: c["name"] for c in found if tuple(c["column_names"]) in {(n,) for n in LINKS}
    }


def upgrade() -> None:
    present = _unique_on_links()  # a database adopted from a newer create_all may have none
    if not present:
        return
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("audit_entry", naming_convention=NAMES, recreate="always") as batch:
            for column, name in present.items():
                batch.drop_constraint(name or f"uq_audit_entry_{column}", type_="unique")
    else:
        for column, name in present.items():  # PostgreSQL names them itself: audit_entry_<column>_key
            op.drop_constraint(name or f"audit_entry_{column}_key", "audit_entry", type_="unique")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("audit_entry", naming_convention=NAMES, recreate="always") as batch:
            for column in LINKS:
                batch.create_unique_constraint(f"uq_audit_entry_{column}", [column])
    else:
        for column in LINKS:
            op.create_unique_constraint(f"audit_entry_{column}_key", "audit_entry", [column])
