"""Everything held about one lead, as JSON: the answer to an access request (`nurture privacy
export`, `GET /v1/leads/{key}/export`).

Rows are written out column by column from the models, so a column added later is exported
without anyone remembering to add it here.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, inspect, or_, select
from sqlalchemy.orm import Session

from engine.funnel.erasure import address_forms
from engine.models import (
    Base,
    Consent,
    Delivery,
    Enrolment,
    Erasure,
    Event,
    Handoff,
    Lead,
    LeadAlias,
    LeadConflict,
    MilestoneVisit,
    ScoreEntry,
    StageChange,
    Suppression,
    TopicOptOut,
    VersionMove,
    Visitor,
    VisitorEvent,
)

EXPORT_FORMAT = 1  # bumped when the document's shape changes
# The channel an address is suppressed on, by the identity field that holds it.
_CHANNEL = {"email": "email", "phone": "sms"}


def _plain(value: Any) -> Any:
    """A column value as JSON holds it: times in ISO 8601, states as their text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, StrEnum):
        return str(value)
    return value


def row(instance: Base) -> dict[str, Any]:
    """Every column of a row, by attribute name."""
    columns = inspect(type(instance)).column_attrs
    return {column.key: _plain(getattr(instance, column.key)) for column in columns}


def _rows(instances: Iterable[Base]) -> list[dict[str, Any]]:
    return [row(instance) for instance in instances]


def export_lead(session: Session, lead: Lead, now: datetime) -> dict[str, Any]:
    """The lead with its score and every row about it: events, ledger, stage changes,
    enrolments (with milestone visits and version moves), deliveries, handoffs, topics left,
    the identities of leads merged into it and the conflicts naming it, suppressions of all
    those addresses, its visitors and their events, and any erasure."""
    enrolments = list(
        session.scalars(select(Enrolment).where(Enrolment.lead_id == lead.id).order_by("id"))
    )
    ids = [enrolment.id for enrolment in enrolments]
    visits = _by(
        session.scalars(
            select(MilestoneVisit).where(MilestoneVisit.enrolment_id.in_(ids)).order_by("id")
        ),
        "enrolment_id",
    )
    moves = _by(
        session.scalars(
            select(VersionMove).where(VersionMove.enrolment_id.in_(ids)).order_by("id")
        ),
        "enrolment_id",
    )
    aliases = list(
        session.scalars(select(LeadAlias).where(LeadAlias.lead_id == lead.id).order_by("id"))
    )
    conflicts = session.scalars(
        select(LeadConflict)
        .where(or_(LeadConflict.lead_id == lead.id, LeadConflict.other_id == lead.id))
        .order_by("id")
    )
    visitors = list(
        session.scalars(select(Visitor).where(Visitor.lead_id == lead.id).order_by(Visitor.id))
    )
    visitor_events = _by(
        session.scalars(
            select(VisitorEvent)
            .where(VisitorEvent.visitor_id.in_([visitor.id for visitor in visitors]))
            .order_by("id")
        ),
        "visitor_id",
    )

    def of_lead(model: Any) -> list[dict[str, Any]]:
        return _rows(session.scalars(select(model).where(model.lead_id == lead.id).order_by("id")))

    return {
        "format": EXPORT_FORMAT,
        "exported_at": now.isoformat(),
        "lead": row(lead) | {"score": lead.score},
        "events": of_lead(Event),
        "score_ledger": of_lead(ScoreEntry),
        "stage_changes": of_lead(StageChange),
        "enrolments": [
            row(enrolment)
            | {
                "milestone_visits": visits.get(enrolment.id, []),
                "version_moves": moves.get(enrolment.id, []),
            }
            for enrolment in enrolments
        ],
        "deliveries": of_lead(Delivery),
        "handoffs": of_lead(Handoff),
        "topic_opt_outs": of_lead(TopicOptOut),
        "consents": of_lead(Consent),
        "aliases": _rows(aliases),
        "conflicts": _rows(conflicts),
        "suppressions": _rows(_suppressions(session, lead, aliases)),
        "visitors": [
            row(visitor) | {"events": visitor_events.get(visitor.id, [])} for visitor in visitors
        ],
        "erasures": of_lead(Erasure),
    }


def _suppressions(
    session: Session, lead: Lead, aliases: Iterable[LeadAlias]
) -> Iterable[Suppression]:
    """The suppressions of the lead's addresses and its aliases', written out or hashed by an
    erasure: a STOP from the number of a lead merged into it is about the person too."""
    own = [("email", lead.email), ("phone", lead.phone)]
    merged = [(alias.field, alias.value) for alias in aliases]
    addresses = [
        and_(Suppression.channel == _CHANNEL[name], Suppression.address.in_(address_forms(value)))
        for name, value in (*own, *merged)
        if value and name in _CHANNEL
    ]
    if not addresses:
        return ()
    return session.scalars(select(Suppression).where(or_(*addresses)).order_by(Suppression.id))


def _by(instances: Iterable[Base], key: str) -> dict[Any, list[dict[str, Any]]]:
    """Rows grouped by one of their columns (a parent's id)."""
    grouped: dict[Any, list[dict[str, Any]]] = {}
    for instance in instances:
        grouped.setdefault(getattr(instance, key), []).append(row(instance))
    return grouped
