"""The data a template sees: lead, score, sequence, recent activity, unsubscribe link, sender."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from engine.delivery.unsubscribe import make_token
from engine.models import Delivery, Event, Lead
from engine.settings import Settings
from engine.workflow.spec import Sequence

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
    full_name = " ".join(p for p in (lead.first_name, lead.last_name) if p)
    return {
        "id": lead.id,
        "email": lead.email,
        "phone": lead.phone,
        "first_name": lead.first_name or "",
        "last_name": lead.last_name or "",
        "full_name": full_name,
        "company": lead.company or "",
        "title": lead.title or "",
        "timezone": lead.timezone or "",
        "stage": lead.stage,
        "fields": dict(lead.fields or {}),
    }


_RECENT = (
    select(Event.type, Event.occurred_at, Event.properties)
    .where(Event.lead_id == bindparam("lead"), Event.type.in_(MENTIONABLE))
    .order_by(Event.occurred_at.desc(), Event.id.desc())
    .limit(RECENT)
)


def recent_activity(session: Session, lead: Lead) -> list[dict[str, Any]]:
    """The lead's latest mentionable events, with a human title when the event carried one."""
    events = session.execute(_RECENT, {"lead": lead.id})
    return [
        {
            "type": e.type,
            "occurred_at": e.occurred_at,
            "title": str(
                (e.properties or {}).get("title") or (e.properties or {}).get("url") or ""
            ),
            "url": (e.properties or {}).get("url"),
        }
        for e in events
    ]


def message_context(
    session: Session,
    settings: Settings,
    lead: Lead,
    delivery: Delivery,
    sequence: Sequence,
    now: Any,
) -> dict[str, Any]:
    """Everything a step's template may use, built once per send."""
    return {
        "lead": lead_view(lead),
        "score": {"total": lead.score, "fit": lead.fit, "engagement": lead.engagement},
        "sequence": {"name": sequence.name, "description": sequence.description},
        "milestone": {"id": delivery.milestone},
        "recent_activity": recent_activity(session, lead),
        "unsubscribe_url": unsubscribe_url(settings, lead.id, sequence.topic),
        "sender": {
            "name": sequence.send.from_name,
            "email": sequence.send.from_email,
            "company": settings.company_name,
            "postal_address": settings.postal_address,
        },
        "now": now,
    }
