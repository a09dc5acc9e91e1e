"""lead merging: aliases of merged leads, and conflicts listed for a person to decide

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lead_aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("field", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=320), nullable=False),
        sa.Column("lead_id", sa.Integer(), nullable=False),
        sa.Column("merged_lead", sa.Integer(), nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["lead_id"], ["leads.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("field", "value", name="uq_lead_alias"),
    )
    op.create_index("ix_lead_aliases_lead_id", "lead_aliases", ["lead_id"])
    op.create_table(
        "lead_conflicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("lead_id", sa.Integer(), nullable=False),
        sa.Column("other_id", sa.Integer(), nullable=False),
        sa.Column("field", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=320), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("times", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["lead_id"], ["leads.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["other_id"], ["leads.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("lead_id", "other_id", "field", name="uq_lead_conflict"),
    )
    op.create_index("ix_lead_conflicts_lead_id", "lead_conflicts", ["lead_id"])
    op.create_index("ix_lead_conflicts_other_id", "lead_conflicts", ["other_id"])


def downgrade() -> None:
    op.drop_table("lead_conflicts")
    op.drop_table("lead_aliases")
