"""email keys: addresses kept as written, looked up lower-cased

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 22:00:00
"""

from __future__ import annotations

import idna
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("leads", sa.Column("email_key", sa.String(length=320), nullable=True))
    # Addresses were stored lower-cased until now: each is its own key.
    op.execute("UPDATE leads SET email_key = email")
    _unicode_domains()
    op.create_index("ix_leads_email_key", "leads", ["email_key"], unique=True)


def _unicode(address: str) -> str:
    """An address on an IDNA (xn--) domain as addresses are stored from now on: its domain
    in Unicode; one the codec cannot read stays as it was."""
    local, _, domain = address.rpartition("@")
    try:
        return f"{local}@{idna.decode(domain)}"
    except idna.IDNAError:
        return address


def _unicode_domains() -> None:
    """Addresses and email suppressions on xn-- domains, written as lookups now write them."""
    connection = op.get_bind()
    leads = connection.execute(sa.text("SELECT id, email FROM leads WHERE email LIKE '%xn--%'"))
    for lead_id, email in leads.all():
        address = _unicode(email)
        connection.execute(
            sa.text("UPDATE leads SET email = :email, email_key = :key WHERE id = :id"),
            {"email": address, "key": address.lower(), "id": lead_id},
        )
    suppressions = connection.execute(
        sa.text(
            "SELECT id, address FROM suppressions WHERE channel = 'email' AND address LIKE '%xn--%'"
        )
    )
    for row_id, address in suppressions.all():
        key = _unicode(address).lower()
        taken = connection.execute(
            sa.text("SELECT 1 FROM suppressions WHERE channel = 'email' AND address = :key"),
            {"key": key},
        ).first()
        if taken:  # already suppressed in the new spelling: one row is enough
            connection.execute(sa.text("DELETE FROM suppressions WHERE id = :id"), {"id": row_id})
        else:
            connection.execute(
                sa.text("UPDATE suppressions SET address = :key WHERE id = :id"),
                {"key": key, "id": row_id},
            )


def downgrade() -> None:
    op.drop_index("ix_leads_email_key", table_name="leads")
    with op.batch_alter_table("leads") as batch:
        batch.drop_column("email_key")
