"""Open lead conflicts: calls that gave one lead an identity another lead holds (merge: ask),
for a person to decide whether the two are one; shared by `nurture leads conflicts` and
`GET /v1/conflicts`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from engine.models import Lead, LeadConflict

_LEAD, _OTHER = aliased(Lead), aliased(Lead)
_OPEN = (
    select(LeadConflict, _LEAD, _OTHER)
    .join(_LEAD, _LEAD.id == LeadConflict.lead_id)
    .join(_OTHER, _OTHER.id == LeadConflict.other_id)
    .order_by(LeadConflict.last_seen_at.desc(), LeadConflict.id.desc())
)


def open_conflicts(session: Session) -> list[dict[str, Any]]:
    """Every listed conflict, last seen first: the lead the call named and the other lead that
    holds the value (ids and keys, to merge them by), the field and value, where it came
    from, when it was first and last seen and how often; JSON-ready."""
    return [
        {
            "lead_id": lead.id,
            "lead": lead.key,
            "other_id": other.id,
            "other": other.key,
            "field": conflict.field,
            "value": conflict.value,
            "source": conflict.source,
            "first_seen_at": conflict.first_seen_at.isoformat(),
            "last_seen_at": conflict.last_seen_at.isoformat(),
            "times": conflict.times,
        }
        for conflict, lead, other in session.execute(_OPEN)
    ]
