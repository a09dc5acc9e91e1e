"""experiments: the variant of each delivery, holdout enrolments, and each step's winning variant

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 16:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


# Plain ADD and DROP COLUMN, never batch mode: on SQLite a batch rebuilds the table, and
# dropping the old enrolments table would cascade to every delivery and milestone visit.


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("variant", sa.String(length=100), nullable=True))
    op.add_column(
        "enrolments", sa.Column("holdout", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.create_table(
        "variant_picks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.String(length=100), nullable=False),
        sa.Column("milestone", sa.String(length=100), nullable=False),
        sa.Column("step", sa.String(length=200), nullable=False),
        sa.Column("variant", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("figures", JSON, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("picked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sequence", "milestone", "step", name="uq_variant_pick_step"),
    )


def downgrade() -> None:
    op.drop_table("variant_picks")
    op.drop_column("enrolments", "holdout")  # SQLite 3.35+ drops a column in place
    op.drop_column("deliveries", "variant")
