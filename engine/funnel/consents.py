"""Consent records from hosted forms, and double opt-in: consent only after the emailed link.

Decisions:
- A form's consent box, ticked, is one `Consent` row: the exact text shown, the topic, the
  form, the page, the IP and browser, when. Unticked, nothing is recorded, and a lead the form
  creates has no email consent.
- Single opt-in (`given`): a new lead keeps the email consent every new lead gets; an existing
  lead's consent is left as it was. Only a confirmed click from the inbox undoes an opt-out.
- Double opt-in: a lead the form creates starts without email consent and gets it only when
  the confirmation link is followed (`pending` -> `confirmed`, with the time, IP and browser
  of the click). Confirming also rejoins the form's topic, lifts a suppression that an
  unsubscribe left (the person asked again and proved the inbox is theirs) and records
  `email_confirmed` with the form and topic, through the service, for sequences to enrol on.
- A lead that already has email consent and has not left the topic is `existing`: there is
  nothing to confirm and no email goes out (filling the form again is not a new opt-in).
- An address suppressed for a bounce or a complaint is `blocked`: no confirmation email.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from channels.base import EMAIL
from engine.funnel.erasure import address_forms
from engine.funnel.leads import Identity, find_lead, lock_lead
from engine.funnel.service import Outcome, track
from engine.funnel.topics import has_left
from engine.funnel.visitors import named
from engine.models import (
    IDENTITY_FIELDS,
    STANDARD_FIELDS,
    Consent,
    ConsentStatus,
    Lead,
    Suppression,
    TopicOptOut,
)
from engine.signing import dated_token, read_dated_token
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Form

CONFIRMED_EVENT = "email_confirmed"
CONFIRM_MAX_AGE = timedelta(days=7)  # how long a confirmation link works
_PURPOSE = "confirm"


@dataclass(frozen=True)
class Where:
    """Where a consent was given or confirmed: the client address, its browser, the page."""

    ip: str | None
    user_agent: str | None = None
    page_url: str | None = None


def confirm_token(secret: str, consent_id: int, issued_at: datetime) -> str:
    """The signed token of a confirmation link for one pending consent."""
    return dated_token(secret, _PURPOSE, consent_id, issued_at)


def read_confirm_token(
    secret: str, token: str, now: datetime, max_age: timedelta = CONFIRM_MAX_AGE
) -> int:
    """The consent a confirmation token names; InvalidTokenError when forged, altered or
    older than `max_age`."""
    return read_dated_token(secret, token, _PURPOSE, now, max_age)


def withheld(session: Session, form: Form, lead: Mapping[str, Any], given: bool) -> dict[str, Any]:
    """The lead data a public submission records. Anyone can type an address, so it may create
    a lead but never rewrite one: on a lead that exists it fills only fields still empty, and
    an identity (phone, external id) another lead holds is left out, never refused (the answer
    must not say whose it is). A lead it creates gets no email consent when the form asks for
    consent and it was not given, or until it is confirmed (double opt-in)."""
    identity = Identity.parse(lead)
    column, value = identity.key()
    data = {
        name: given_value
        for name, given_value in lead.items()
        if name not in IDENTITY_FIELDS or name == column or not _held(session, identity, name)
    }
    existing = find_lead(session, identity)
    if existing is not None:
        return {
            name: given_value
            for name, given_value in data.items()
            if name == column or _empty(existing, name)
        }
    if form.consent is not None and not (given and not form.consent.double_opt_in):
        data["email_consent"] = False
    return data


def _held(session: Session, identity: Identity, name: str) -> bool:
    """True when the identity's `name` (phone, external id) belongs to a lead already."""
    value = getattr(identity, name)
    return value is not None and find_lead(session, Identity(**{name: value})) is not None


def _empty(lead: Lead, name: str) -> bool:
    """True when the lead has no value for a field a form may fill."""
    if name in IDENTITY_FIELDS or name in STANDARD_FIELDS:
        return getattr(lead, name) in (None, "")
    return (lead.fields or {}).get(name) in (None, "")


def ask(
    session: Session, rt: Runtime, lead: Lead, form: Form, given: bool, where: Where
) -> Consent | None:
    """Record the consent a submission gave, if any; `pending` ones need a confirmation email."""
    if form.consent is None or not given:
        return None
    status = ConsentStatus.GIVEN
    if form.consent.double_opt_in:
        refused, unsubscribed = _suppressions(session, lead.email)
        if refused:
            status = ConsentStatus.BLOCKED
        elif lead.email_consent and not unsubscribed and not has_left(session, lead.id, form.topic):
            status = ConsentStatus.EXISTING
        else:
            status = ConsentStatus.PENDING
    consent = Consent(
        lead_id=lead.id,
        channel=EMAIL,
        topic=form.topic,
        form=form.name,
        text=form.consent.text,
        status=status,
        ip=where.ip,
        user_agent=(where.user_agent or "")[:500] or None,
        page_url=(where.page_url or "")[:2000] or None,
        requested_at=rt.clock.now(),
    )
    session.add(consent)
    session.flush()
    return consent


@dataclass(frozen=True)
class Confirmed:
    """What following a confirmation link did: `outcome` of its event, or `already` confirmed."""

    consent: Consent
    outcome: Outcome | None = None

    @property
    def already(self) -> bool:
        """True when the link had been followed before: nothing changed this time."""
        return self.outcome is None


def confirm(session: Session, rt: Runtime, consent_id: int, where: Where) -> Confirmed | None:
    """Confirm a pending consent under its lead's row lock: email consent on, the topic
    rejoined, an unsubscribe's suppression lifted, `email_confirmed` recorded. None when the
    consent, its lead or its pending state is gone (erased, or never one to confirm)."""
    lead_id = session.scalar(select(Consent.lead_id).where(Consent.id == consent_id))
    if lead_id is None:
        return None
    lead = lock_lead(session, lead_id)
    consent = session.get_one(Consent, consent_id, populate_existing=True)
    if lead.erased_at is not None or lead.email is None:
        return None
    if consent.status == ConsentStatus.CONFIRMED:
        return Confirmed(consent)
    if consent.status != ConsentStatus.PENDING:
        return None
    now = rt.clock.now()
    consent.status = ConsentStatus.CONFIRMED
    consent.confirmed_at = now
    consent.confirm_ip = where.ip
    consent.confirm_user_agent = (where.user_agent or "")[:500] or None
    lead.email_consent = True
    session.execute(
        delete(TopicOptOut).where(
            TopicOptOut.lead_id == lead.id, TopicOptOut.topic == consent.topic
        )
    )
    _, unsubscribed = _suppressions(session, lead.email)
    if unsubscribed:
        session.execute(delete(Suppression).where(Suppression.id.in_(unsubscribed)))
    outcome = track(
        session,
        rt,
        named(lead),
        CONFIRMED_EVENT,
        {"form": consent.form, "topic": consent.topic},
        event_id=f"confirm:{consent.id}",
        source="form",
    )
    return Confirmed(consent, outcome)


def _suppressions(session: Session, email: str | None) -> tuple[bool, list[int]]:
    """Whether the email address is suppressed for a bounce or complaint, and the ids of the
    suppressions an unsubscribe left on it (ours, or a provider's `unsubscribed`)."""
    if not email:
        return False, []
    rows = session.execute(
        select(Suppression.id, Suppression.reason).where(
            Suppression.channel == EMAIL, Suppression.address.in_(list(address_forms(email)))
        )
    ).all()
    unsubscribed = [row.id for row in rows if _unsubscribe(row.reason)]
    return len(unsubscribed) < len(rows), unsubscribed


def _unsubscribe(reason: str) -> bool:
    """True for a suppression an unsubscribe left: ours ("unsubscribed from all emails ...")
    or a provider's ("sendgrid unsubscribed")."""
    head = reason.split(":", 1)[0]
    return reason.startswith("unsubscribed") or head.endswith(" unsubscribed")


def consents_of(session: Session, lead_id: int) -> list[Consent]:
    """A lead's consent records, oldest first: for `lead show` and the export."""
    query = select(Consent).where(Consent.lead_id == lead_id).order_by(Consent.id)
    return list(session.scalars(query))
