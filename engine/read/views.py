"""Read models of one lead, shared by `nurture lead show` and `GET /v1/leads/{key}`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from engine.contacts import phone_kind, phone_region
from engine.errors import UnknownLeadError
from engine.funnel.erasure import address_forms
from engine.funnel.leads import Identity, get_lead, lead_by_id
from engine.models import (
    Consent,
    Delivery,
    Enrolment,
    Event,
    EventStatus,
    Handoff,
    Lead,
    ScoreEntry,
    Suppression,
    TopicOptOut,
)

LEDGER_ROWS = 50


MAX_ID = 2**31 - 1  # the largest INTEGER key; a larger number names nobody


def find_by_key(session: Session, key: str) -> Lead:
    """A lead by numeric id, E.164 phone or email; UnknownLeadError when nobody has it. The id
    of a lead merged into another names the survivor, as its other identities do."""
    key = key.strip()
    if key.isascii() and key.isdigit():
        lead = lead_by_id(session, int(key)) if int(key) <= MAX_ID else None
        if lead is None:
            raise UnknownLeadError(f"no lead with id {key}")
        return lead
    field = "phone" if key.startswith("+") else "email" if "@" in key else "external_id"
    return get_lead(session, Identity.parse({field: key}))


def lead_suppressions(session: Session, lead: Lead) -> Iterable[Suppression]:
    """The suppressions of the lead's addresses, written out or hashed by an erasure."""
    addresses = [
        and_(Suppression.channel == channel, Suppression.address.in_(address_forms(address)))
        for channel, address in (("email", lead.email), ("sms", lead.phone))
        if address
    ]
    if not addresses:
        return ()
    return session.scalars(select(Suppression).where(or_(*addresses)).order_by(Suppression.id))


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _contact_facts(lead: Lead) -> dict[str, Any]:
    """What the phone number's plan says (its region and kind) and the zone sends are timed in,
    with where that zone came from: the lead's own, its phone number's area, or (None) the
    sending rules' default."""
    zone_from = "timezone" if lead.timezone else "phone" if lead.zone else "default"
    return {
        "phone_region": phone_region(lead.phone) if lead.phone else None,
        "phone_kind": str(phone_kind(lead.phone)) if lead.phone else None,
        "send_zone": lead.zone,
        "send_zone_from": zone_from,
    }


def lead_detail(session: Session, lead: Lead) -> dict[str, Any]:
    """Who the lead is, its score and why, its sequences and sends, and events not yet processed;
    the suppressions of its addresses and the email topics it left: why a send was skipped."""
    ledger = session.scalars(
        select(ScoreEntry)
        .where(ScoreEntry.lead_id == lead.id)
        .order_by(ScoreEntry.occurred_at.desc(), ScoreEntry.id.desc())
        .limit(LEDGER_ROWS)
    )
    enrolments = session.scalars(
        select(Enrolment).where(Enrolment.lead_id == lead.id).order_by(Enrolment.id)
    )
    deliveries = session.scalars(
        select(Delivery)
        .where(Delivery.lead_id == lead.id)
        .order_by(Delivery.planned_at, Delivery.step)
    )
    handoffs = session.scalars(
        select(Handoff).where(Handoff.lead_id == lead.id).order_by(Handoff.id)
    )
    unprocessed = session.scalars(
        select(Event)
        .where(Event.lead_id == lead.id, Event.status != EventStatus.PROCESSED)
        .order_by(Event.id)
    )
    suppressions = lead_suppressions(session, lead)
    topics = session.scalars(
        select(TopicOptOut).where(TopicOptOut.lead_id == lead.id).order_by(TopicOptOut.id)
    )
    consents = session.scalars(
        select(Consent).where(Consent.lead_id == lead.id).order_by(Consent.id)
    )
    return {
        "lead": {
            "id": lead.id,
            "email": lead.email,
            "phone": lead.phone,
            "external_id": lead.external_id,
            "first_name": lead.first_name,
            "last_name": lead.last_name,
            "company": lead.company,
            "title": lead.title,
            "timezone": lead.timezone,
            **_contact_facts(lead),
            "fields": dict(lead.fields or {}),
            "stage": lead.stage,
            "owner": lead.owner,
            "email_consent": lead.email_consent,
            "sms_consent": lead.sms_consent,
            "created_at": _iso(lead.created_at),
            "last_activity_at": _iso(lead.last_activity_at),
            "erased_at": _iso(lead.erased_at),
        },
        "score": {"total": lead.score, "fit": lead.fit, "engagement": lead.engagement},
        "ledger": [
            {
                "kind": e.kind,
                "rule": e.rule,
                "points": e.points,
                "reason": e.reason,
                "occurred_at": _iso(e.occurred_at),
            }
            for e in ledger
        ],
        "enrolments": [
            {
                "id": e.id,
                "sequence": e.sequence,
                "milestone": e.milestone,
                "status": e.status,
                "trigger": e.trigger,
                "enrolled_at": _iso(e.enrolled_at),
                "next_run_at": _iso(e.next_run_at),
                "exit_reason": e.exit_reason,
                "holdout": e.holdout,
            }
            for e in enrolments
        ],
        "deliveries": [
            {
                "id": d.id,
                "sequence": d.sequence,
                "milestone": d.milestone,
                "template": d.template,
                "variant": d.variant,
                "channel": d.channel,
                "status": d.status,
                "subject": d.subject,
                "due_at": _iso(d.due_at),
                "sent_at": _iso(d.sent_at),
                "detail": d.detail,
            }
            for d in deliveries
        ],
        "handoffs": [
            {
                "id": h.id,
                "crossing": h.crossing,
                "created_at": _iso(h.created_at),
                "owner": h.owner,
                "status": h.status,
                "score": h.score,
                "delivered_at": _iso(h.delivered_at),
            }
            for h in handoffs
        ],
        "unprocessed_events": [
            {
                "id": e.id,
                "idempotency_key": e.idempotency_key,
                "type": e.type,
                "occurred_at": _iso(e.occurred_at),
                "received_at": _iso(e.received_at),
                "status": e.status,
                "attempts": e.attempts,
                "error": e.error,
                "retry_at": _iso(e.retry_at),
            }
            for e in unprocessed
        ],
        "suppressions": [
            {
                "channel": s.channel,
                "address": s.address,
                "reason": s.reason,
                "created_at": _iso(s.created_at),
            }
            for s in suppressions
        ],
        "unsubscribed_topics": [
            {"topic": t.topic, "source": t.source, "created_at": _iso(t.created_at)} for t in topics
        ],
        "consents": [
            {
                "form": c.form,
                "topic": c.topic,
                "status": c.status,
                "text": c.text,
                "page_url": c.page_url,
                "ip": c.ip,
                "requested_at": _iso(c.requested_at),
                "confirmed_at": _iso(c.confirmed_at),
            }
            for c in consents
        ],
    }
