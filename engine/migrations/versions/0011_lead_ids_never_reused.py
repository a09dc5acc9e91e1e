"""lead ids never reused: SQLite's leads table rebuilt with AUTOINCREMENT

A merge deletes the merged lead, and its id lives on in links and unsubscribe tokens (an
alias sends them to the survivor). SQLite without AUTOINCREMENT hands the highest id out
again to the next new lead, which those tokens would then name. PostgreSQL's sequences never
hand an id out twice: nothing to do there.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 01:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # `upgrade` turns foreign keys off around the run: dropping the old table must not cascade
    with op.batch_alter_table(
        "leads", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "leads", recreate="always", table_kwargs={"sqlite_autoincrement": False}
    ):
        pass
