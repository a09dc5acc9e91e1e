"""Erasing a lead's personal data: the row stays as an anonymised tombstone, so funnel counts,
experiment and holdout reports and the suppression list still hold; every erasure is logged.

What goes, per table: the lead's identity, names, company, title, time zone, custom fields and
fit rules (derived from them), and its consent; event properties (all but the `delivery_id`
the reports join on), idempotency keys and errors; the free-text reasons of the ledger, stage
changes and milestone visits; delivery subjects, details and provider message ids; a handoff's
cause and recent activity; the lead's visitors and their events, the identities of the leads
merged into it (aliases) and the conflicts naming it (removed). What stays: event types and
times, ledger rules and points, stages and their times, enrolments with their exit reasons
(engine text the funnel counts by), deliveries' status, step and variant, topic opt-outs.
Suppressions of the lead's addresses, and of those of the leads merged into it, keep blocking
them, stored as a one-way hash (`hashed_address`) instead of the address itself.
"""

from __future__ import annotations

import calendar
import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from engine.contacts import email_key
from engine.db import changed_rows
from engine.errors import UnknownLeadError
from engine.funnel.journey import end_all
from engine.funnel.leads import lock_leads_and_visitors
from engine.models import (
    Consent,
    Delivery,
    DeliveryStatus,
    Enrolment,
    Erasure,
    ErasureReason,
    Event,
    EventStatus,
    Handoff,
    HandoffStatus,
    Lead,
    LeadAlias,
    LeadConflict,
    MilestoneVisit,
    ScoreEntry,
    StageChange,
    Suppression,
    Visitor,
    VisitorEvent,
)
from engine.workflow.runtime import Runtime

HASH_PREFIX = "sha256:"
ERASED = "erased"  # what is left of a free-text reason, and the exit reason of running enrolments
# Event properties the reports read (stats and experiments join feedback to its send by it).
KEPT_PROPERTIES = ("delivery_id",)
RETENTION_BATCH = 100  # idle leads erased per transaction
# The channel an address is suppressed on, by the identity field that holds it.
_CHANNEL = {"email": "email", "phone": "sms"}


def hashed_address(address: str) -> str:
    """The one-way form of a stored (normalised) address, kept once its lead is erased.

    Unkeyed on purpose: a suppression must keep matching when the secret key rotates, and
    the hash only confirms an address someone already knows is on the list."""
    return HASH_PREFIX + hashlib.sha256(address.encode()).hexdigest()


def address_forms(address: str) -> tuple[str, str]:
    """The forms a suppression of `address` may be stored in: its lookup key (an email
    lower-cased), or that hashed after its lead was erased; every lookup matches both."""
    key = email_key(address)
    return key, hashed_address(key)


@dataclass(frozen=True)
class Erased:
    """One erasure done: the tombstone, the log row, and the rows scrubbed per table."""

    lead_id: int
    erasure_id: int
    reason: ErasureReason
    via: str
    erased_at: datetime
    summary: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """As JSON for the API and the CLI."""
        return {
            "lead_id": self.lead_id,
            "erasure_id": self.erasure_id,
            "reason": str(self.reason),
            "via": self.via,
            "erased_at": self.erased_at.isoformat(),
            "summary": self.summary,
        }


def erase_lead(
    session: Session, rt: Runtime, lead_id: int, reason: ErasureReason, via: str
) -> Erased:
    """Erase one lead under its row lock; UnknownLeadError when it is gone or already erased
    (which writes no second log row)."""
    done = erase_leads(session, rt, [lead_id], reason, via)
    if not done:
        lead = session.get(Lead, lead_id)
        if lead is None:
            raise UnknownLeadError(f"no lead with id {lead_id}")
        erased_at = lead.erased_at.isoformat() if lead.erased_at else "before"
        raise UnknownLeadError(f"lead {lead_id} was already erased ({erased_at})")
    return done[0]


def erase_leads(
    session: Session,
    rt: Runtime,
    lead_ids: Collection[int],
    reason: ErasureReason,
    via: str,
    *,
    idle_before: datetime | None = None,
) -> list[Erased]:
    """Erase leads, locked in id order in one statement as every writer of a lead does, so an
    event racing the erasure either lands before it (and is scrubbed) or finds no lead by that
    identity (and creates a new one). Leads already erased are left out, and with
    `idle_before` so are leads active since then. The caller owns the transaction."""
    session.flush()
    wanted = set(lead_ids)
    for loaded in list(session.identity_map.values()):
        if isinstance(loaded, Lead) and loaded.id in wanted:
            session.expire(loaded)  # read again under the lock: another erasure may have won
    leads = lock_leads_and_visitors(session, wanted)
    done = []
    for lead in (leads[lead_id] for lead_id in sorted(leads)):
        if lead.erased_at is not None:
            continue
        if idle_before is not None and (lead.last_activity_at or lead.created_at) >= idle_before:
            continue
        done.append(_erase(session, rt, lead, reason, via))
    return done


def _erase(session: Session, rt: Runtime, lead: Lead, reason: ErasureReason, via: str) -> Erased:
    """Scrub one locked lead everywhere, stop what was still due for it, and log it."""
    now = rt.clock.now()
    scrubbed = {
        "events": _scrub_events(session, lead),
        "score_ledger": _set(session, ScoreEntry, ScoreEntry.lead_id == lead.id, reason=ERASED),
        "stage_changes": _set(session, StageChange, StageChange.lead_id == lead.id, reason=ERASED),
        "milestone_visits": _set(
            session,
            MilestoneVisit,
            MilestoneVisit.enrolment_id.in_(
                select(Enrolment.id).where(Enrolment.lead_id == lead.id)
            ),
            reason=ERASED,
        ),
        # a skip's detail may name the address ("suppressed: ..."), a failure the provider's
        # words about it; the subject was rendered with the lead's attributes
        "deliveries": _set(
            session,
            Delivery,
            Delivery.lead_id == lead.id,
            subject=None,
            detail=None,
            provider_message_id=None,
        ),
        "handoffs": _scrub_handoffs(session, lead),
        "suppressions": _hash_suppressions(session, lead),
        # proof of consent keeps what was shown and when; where from and by whom go
        "consents": _set(
            session,
            Consent,
            Consent.lead_id == lead.id,
            ip=None,
            user_agent=None,
            page_url=None,
            confirm_ip=None,
            confirm_user_agent=None,
        ),
    }
    summary: dict[str, Any] = {
        "scrubbed": scrubbed,
        # aliases go once `_hash_suppressions` (in `scrubbed`) hashed their addresses
        "removed": _remove_visitors(session, lead) | _remove_identities(session, lead),
        "stopped": _stop(session, rt, lead),
    }
    for name in ("email", "external_id", "phone", "first_name", "last_name", "company", "title"):
        setattr(lead, name, None)
    lead.timezone = None
    lead.fields = {}
    lead.fit_rules = {}  # which attribute rules matched says who the lead is
    lead.email_consent = lead.sms_consent = False
    lead.decay_due_at = lead.inactive_due_at = None  # the clock has nothing more to do to it
    lead.updated_at = lead.erased_at = now
    erasure = Erasure(lead_id=lead.id, reason=reason, via=via, erased_at=now, summary=summary)
    session.add(erasure)
    session.flush()
    return Erased(lead.id, erasure.id, reason, via, now, summary)


def _set(session: Session, model: type[Any], *where: Any, **values: Any) -> int:
    """Set columns on the rows `where` picks; how many there were."""
    return changed_rows(session, update(model).where(*where).values(**values))


def _scrub_events(session: Session, lead: Lead) -> int:
    """Events keep their type and time (and the send they report on); an event not processed
    yet is closed, since its consequences would now run on a tombstone."""
    events = list(session.scalars(select(Event).where(Event.lead_id == lead.id)))
    for event in events:
        kept = {k: v for k, v in (event.properties or {}).items() if k in KEPT_PROPERTIES}
        event.properties = kept
        event.idempotency_key = None
        event.error = None
        event.retry_at = None
        event.status = EventStatus.PROCESSED
    return len(events)


def _scrub_handoffs(session: Session, lead: Lead) -> int:
    """A handoff keeps its score breakdown (rules and points, as the ledger does) and its
    threshold; the cause and the recent activity it carried go (`_stop` withdraws a pending
    one)."""
    handoffs = list(session.scalars(select(Handoff).where(Handoff.lead_id == lead.id)))
    for handoff in handoffs:
        handoff.reasons = {
            "threshold": (handoff.reasons or {}).get("threshold"),
            "cause": ERASED,
            "recent_activity": [],
        }
    return len(handoffs)


def _hash_suppressions(session: Session, lead: Lead) -> int:
    """The lead's addresses, and those of leads merged into it, stay suppressed, as their hash;
    the reason keeps its engine part (before a colon), never the provider's words, which may
    quote the address or an identity."""
    aliases = session.execute(
        select(LeadAlias.field, LeadAlias.value).where(LeadAlias.lead_id == lead.id)
    )
    merged = [(name, value) for name, value in aliases if name != "id"]
    own = [("email", lead.email), ("phone", lead.phone), ("external_id", lead.external_id)]
    addresses = [
        (_CHANNEL[name], value) for name, value in (*own, *merged) if value and name in _CHANNEL
    ]
    names = tuple(email_key(value) for _, value in (*own, *merged) if value)
    count = 0
    for channel, address in addresses:
        plain, hashed = address_forms(address)
        rows = session.scalars(
            select(Suppression).where(
                Suppression.channel == channel, Suppression.address.in_((plain, hashed))
            )
        ).all()
        keeps_hash = any(row.address == hashed for row in rows)
        for row in rows:
            count += 1
            if row.address == plain and keeps_hash:
                session.delete(row)  # the hashed row of an earlier erasure blocks it already
                continue
            row.address = hashed
            row.reason = _engine_part(row.reason, names)
    return count


def _engine_part(reason: str, names: tuple[str | None, ...]) -> str:
    """A suppression reason without what came from outside: the text before its first colon,
    unless even that names the lead."""
    head = reason.split(":", 1)[0].strip()
    lowered = head.lower()
    return ERASED if any(n and n.lower() in lowered for n in names) else head or ERASED


def _remove_visitors(session: Session, lead: Lead) -> dict[str, int]:
    """The lead's anonymous visitors and their events go: a browser id is a way back to them."""
    visitors = select(Visitor.id).where(Visitor.lead_id == lead.id)
    removed_events = changed_rows(
        session, delete(VisitorEvent).where(VisitorEvent.visitor_id.in_(visitors))
    )
    removed = changed_rows(session, delete(Visitor).where(Visitor.lead_id == lead.id))
    return {"visitors": removed, "visitor_events": removed_events}


def _remove_identities(session: Session, lead: Lead) -> dict[str, int]:
    """The merged leads' identities go (an alias would name the tombstone, so the person coming
    back would land on it), and so do the conflicts pairing the lead with another."""
    aliases = changed_rows(session, delete(LeadAlias).where(LeadAlias.lead_id == lead.id))
    conflicts = changed_rows(
        session,
        delete(LeadConflict).where(
            or_(LeadConflict.lead_id == lead.id, LeadConflict.other_id == lead.id)
        ),
    )
    return {"lead_aliases": aliases, "lead_conflicts": conflicts}


def _stop(session: Session, rt: Runtime, lead: Lead) -> dict[str, int]:
    """End running enrolments (exit reason `erased`), skip every send still planned, and
    withdraw pending handoffs: never sent to the CRM nor noted to their owner, even by a
    message already queued."""
    planned = (Delivery.lead_id == lead.id, Delivery.status == DeliveryStatus.PLANNED)
    skipped = session.scalar(select(func.count()).where(*planned)) or 0
    ended = end_all(session, rt, lead, ERASED)  # skips its own planned sends
    _set(session, Delivery, *planned, status=DeliveryStatus.SKIPPED, detail=f"lead {ERASED}")
    pending = (Handoff.lead_id == lead.id, Handoff.status == HandoffStatus.PENDING)
    withdrawn = _set(
        session, Handoff, *pending, status=HandoffStatus.WITHDRAWN, next_attempt_at=None
    )
    return {"enrolments": len(ended), "deliveries": skipped, "handoffs": withdrawn}


def months_before(moment: datetime, months: int) -> datetime:
    """The same moment `months` calendar months earlier (the 31st becomes the month's last)."""
    total = moment.year * 12 + moment.month - 1 - months
    year, month = divmod(total, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def idle_leads(session: Session, before: datetime, limit: int) -> list[int]:
    """Leads not erased whose last activity (else their creation) came before `before`."""
    query = (
        select(Lead.id)
        .where(
            Lead.erased_at.is_(None),
            or_(
                Lead.last_activity_at < before,
                and_(Lead.last_activity_at.is_(None), Lead.created_at < before),
            ),
        )
        .order_by(Lead.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def erase_idle(
    session: Session, rt: Runtime, months: int, via: str, limit: int = RETENTION_BATCH
) -> list[Erased]:
    """Erase at most `limit` leads idle for `months` (reason `retention`); the caller runs it
    again while a full batch came back."""
    before = months_before(rt.clock.now(), months)
    ids = idle_leads(session, before, limit)
    return erase_leads(session, rt, ids, ErasureReason.RETENTION, via, idle_before=before)
