"""The data a template sees: lead, score, sequence, recent activity, unsubscribe link, sender."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from engine.delivery.rendering import sample_context
from engine.delivery.unsubscribe import make_token
from engine.models import Delivery, Event, Lead
from engine.settings import Settings
from engine.workflow.spec import DEFAULT_TOPIC, Sequence

# Events worth mentioning in copy ("you downloaded X"), newest first.
MENTIONABLE = (
    "content_downloaded",
    "page_viewed",
    "form_submitted",
    "email_clicked",
    "webinar_attended",
)
RECENT = 5


def unsubscribe_url(settings: Settings, lead_id: int, topic: str) -> str:
    """The one-click unsubscribe link for a lead and an email topic, signed against forgery."""
    return f"{settings.public_url}/u/{make_token(settings.secret_key, lead_id, topic)}"


def lead_view(lead: Lead) -> dict[str, Any]:
    """The lead as templates see it; values stay data and are never rendered as templates."""
    return {
        "id": lead.id,
        "email": lead.email,
        "phone": lead.phone,
        "first_name": lead.first_name or "",
        "last_name": lead.last_name or "",
        "full_name": lead.full_name,
        "company": lead.company or "",
        "title": lead.title or "",
        "timezone": lead.timezone or "",
        "send_zone": lead.zone or "",  # its own, else its phone number's area's
        "stage": lead.stage,
        "fields": dict(lead.fields or {}),
    }


def score_view(lead: Lead) -> dict[str, Any]:
    """The lead's score as templates see it: the total and its two halves."""
    return {"total": lead.score, "fit": lead.fit, "engagement": lead.engagement}


_NEWEST = (
    func.row_number()
    .over(partition_by=Event.lead_id, order_by=(Event.occurred_at.desc(), Event.id.desc()))
    .label("newest")
)
_MENTIONED = (
    select(Event.lead_id, Event.type, Event.occurred_at, Event.properties, _NEWEST)
    .where(Event.lead_id.in_(bindparam("leads", expanding=True)), Event.type.in_(MENTIONABLE))
    .subquery()
)
_RECENT = (
    select(
        _MENTIONED.c.lead_id, _MENTIONED.c.type, _MENTIONED.c.occurred_at, _MENTIONED.c.properties
    )
    .where(_MENTIONED.c.newest <= RECENT)
    .order_by(_MENTIONED.c.lead_id, _MENTIONED.c.newest)
)


def recent_activities(session: Session, lead_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """Each lead's latest mentionable events, with a human title when the event carried one."""
    activity: dict[int, list[dict[str, Any]]] = {}
    leads = sorted(set(lead_ids))
    if not leads:
        return activity
    for lead_id, kind, occurred_at, properties in session.execute(_RECENT, {"leads": leads}):
        props = properties or {}
        activity.setdefault(lead_id, []).append(
            {
                "type": kind,
                "occurred_at": occurred_at,
                "title": str(props.get("title") or props.get("url") or ""),
                "url": props.get("url"),
            }
        )
    return activity


def recent_activity(session: Session, lead: Lead) -> list[dict[str, Any]]:
    """One lead's latest mentionable events (`recent_activities` for a batch of one)."""
    return recent_activities(session, [lead.id]).get(lead.id, [])


def message_context(
    settings: Settings,
    lead: Lead,
    delivery: Delivery,
    sequence: Sequence,
    recent: list[dict[str, Any]],
    now: Any,
) -> dict[str, Any]:
    """Everything a step's template may use, built once per send (`recent`: the lead's
    `recent_activities`, read for the whole batch)."""
    return {
        "lead": lead_view(lead),
        "score": score_view(lead),
        "sequence": {"name": sequence.name, "description": sequence.description},
        "milestone": {"id": delivery.milestone},
        "recent_activity": recent,
        "unsubscribe_url": unsubscribe_url(settings, lead.id, sequence.topic),
        "sender": {
            "name": sequence.send.from_name,
            "email": sequence.send.from_email,
            "company": settings.company_name,
            "postal_address": settings.postal_address,
        },
        "now": now,
    }


def preview_context(
    settings: Settings,
    now: datetime,
    sequence: Sequence | None = None,
    lead: Lead | None = None,
    recent: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What a preview renders against, for `nurture preview` and the dashboard alike: the
    sample lead, or `lead` with its score, `recent` activity (`recent_activity`) and its own
    unsubscribe link; in `sequence` when the template is one of its steps."""
    context = sample_context(now)
    if sequence is not None:
        context["sequence"] = {"name": sequence.name, "description": sequence.description}
    if lead is not None:
        topic = sequence.topic if sequence is not None else DEFAULT_TOPIC
        context |= {
            "lead": lead_view(lead),
            "score": score_view(lead),
            "recent_activity": recent or [],
            "unsubscribe_url": unsubscribe_url(settings, lead.id, topic),
        }
    return context
