"""due indexes: status first, so what falls due next is one index seek

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 08:00:00

The scheduler asks, every pass, for the earliest failed event to retry, active enrolment and
pending handoff. Indexed on the time alone, finished rows (their time NULL, sorted first)
had to be walked past on SQLite: a pass cost grew with every event ever processed.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_events_retry_at", table_name="events")
    op.create_index("ix_events_retry", "events", ["status", "retry_at"])
    op.drop_index("ix_enrolments_due", table_name="enrolments")
    op.create_index("ix_enrolments_due", "enrolments", ["status", "next_run_at"])
    op.drop_index("ix_handoffs_next_attempt_at", table_name="handoffs")
    op.create_index("ix_handoffs_due", "handoffs", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_handoffs_due", table_name="handoffs")
    op.create_index("ix_handoffs_next_attempt_at", "handoffs", ["next_attempt_at"])
    op.drop_index("ix_enrolments_due", table_name="enrolments")
    op.create_index("ix_enrolments_due", "enrolments", ["next_run_at"])
    op.drop_index("ix_events_retry", table_name="events")
    op.create_index("ix_events_retry_at", "events", ["retry_at"])
