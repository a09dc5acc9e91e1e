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

import sqlalchemy as sa
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
    # The copy leaves the counter at the highest id there is; a lead merged away before this
    # had a higher one, which its aliases remember.
    bind = op.get_bind()
    top = bind.execute(
        sa.text(
            "SELECT max(top) FROM (SELECT max(id) AS top FROM leads"
            " UNION ALL SELECT max(merged_lead) FROM lead_aliases)"
        )
    ).scalar()
    if top:
        moved = bind.execute(
            sa.text("UPDATE sqlite_sequence SET seq = :top WHERE name = 'leads'"), {"top": top}
        )
        if not moved.rowcount:
            bind.execute(
                sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('leads', :top)"),
                {"top": top},
            )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "leads", recreate="always", table_kwargs={"sqlite_autoincrement": False}
    ):
        pass
