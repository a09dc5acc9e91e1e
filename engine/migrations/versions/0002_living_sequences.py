"""living sequences: event processing state, workflow versions, version moves, step ids

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 22:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        # events stored before this revision were processed in the same transaction
        batch_op.add_column(
            sa.Column("status", sa.String(length=12), nullable=False, server_default="processed")
        )
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_events_retry_at", ["retry_at"], unique=False)
        batch_op.create_index(
            "ix_events_unprocessed",
            ["status"],
            unique=False,
            postgresql_where=sa.text("status <> 'processed'"),
            sqlite_where=sa.text("status <> 'processed'"),
        )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.alter_column(
            "step", existing_type=sa.String(length=120), type_=sa.String(length=200)
        )
    op.create_table(
        "workflow_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("file", sa.String(length=300), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column(
            "spec",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "name", "hash", name="uq_workflow_version"),
    )
    op.create_table(
        "version_moves",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("enrolment_id", sa.Integer(), nullable=False),
        sa.Column("from_version", sa.String(length=64), nullable=False),
        sa.Column("to_version", sa.String(length=64), nullable=False),
        sa.Column("from_place", sa.String(length=300), nullable=False),
        sa.Column("to_place", sa.String(length=300), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["enrolment_id"], ["enrolments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("version_moves", schema=None) as batch_op:
        batch_op.create_index("ix_version_moves_enrolment_id", ["enrolment_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("version_moves", schema=None) as batch_op:
        batch_op.drop_index("ix_version_moves_enrolment_id")
    op.drop_table("version_moves")
    op.drop_table("workflow_versions")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.alter_column(
            "step", existing_type=sa.String(length=200), type_=sa.String(length=120)
        )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_unprocessed")
        batch_op.drop_index("ix_events_retry_at")
        batch_op.drop_column("retry_at")
        batch_op.drop_column("error")
        batch_op.drop_column("attempts")
        batch_op.drop_column("status")
