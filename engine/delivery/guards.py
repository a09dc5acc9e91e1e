"""What the guards before a send read, once per batch of deliveries: suppressed addresses,
topics left, recent sends against the frequency caps, who had an SMS, the recent activity
the copy mentions. Each is one statement for the whole batch, kept current as the batch
marks its own sends, so every delivery sees what it would see alone."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.orm import Session

from engine.contacts import PhoneKind, ascii_address, phone_kind
from engine.delivery.context import recent_activities
from engine.funnel.erasure import address_forms
from engine.models import (
    OUT_OF_NURTURE,
    Delivery,
    DeliveryStatus,
    Enrolment,
    EnrolmentStatus,
    Lead,
    Suppression,
    TopicOptOut,
)
from engine.workflow.spec import Cap

# A send that went out, or may have: it counts against the caps and as the first SMS.
SENT_STATES = (DeliveryStatus.SENDING, DeliveryStatus.SENT, DeliveryStatus.UNKNOWN)


_SUPPRESSED = select(Suppression.channel, Suppression.address).where(
    Suppression.address.in_(bindparam("addresses", expanding=True))
)
_LEFT = select(TopicOptOut.lead_id, TopicOptOut.topic).where(
    TopicOptOut.lead_id.in_(bindparam("leads", expanding=True))
)
# A send being made right now (by this batch or another worker) counts as sent now.
_SENT_AT = func.coalesce(Delivery.sent_at, bindparam("now"))
_SENT_SINCE = select(Delivery.lead_id, Delivery.channel, _SENT_AT).where(
    Delivery.lead_id.in_(bindparam("leads", expanding=True)),
    Delivery.status.in_(SENT_STATES),
    or_(
        Delivery.sent_at > bindparam("since"),
        and_(Delivery.status == DeliveryStatus.SENDING, Delivery.sent_at.is_(None)),
    ),
)
_HAD_SMS = (
    select(Delivery.lead_id)
    .where(
        Delivery.lead_id.in_(bindparam("leads", expanding=True)),
        Delivery.channel == "sms",
        Delivery.status.in_(SENT_STATES),
    )
    .distinct()
)


def stale_reason(delivery: Delivery, enrolment: Enrolment, lead: Lead) -> str | None:
    """Why the lead is no longer at this step (moved on, exited, handed off), or None."""
    if enrolment.status != EnrolmentStatus.ACTIVE:
        return f"stale: enrolment ended ({enrolment.exit_reason})"
    if enrolment.pass_no != delivery.pass_no:
        return f"stale: lead moved to milestone {enrolment.milestone}"
    if lead.stage in OUT_OF_NURTURE:
        return f"stale: lead is {lead.stage}"
    return None


def address_of(lead: Lead, channel: str, smtputf8: bool) -> tuple[str | None, str | None]:
    """The address to use and, when there is none, no consent, or none the channel can reach
    (a fixed line for SMS; a non-ASCII mailbox without `smtputf8`), why not."""
    if channel == "email":
        if not lead.email:
            return None, "no email address"
        if not lead.email_consent:
            return None, "no email consent"
        if not smtputf8 and ascii_address(lead.email) is None:
            return None, (
                f"{lead.email}: a mailbox name in other letters than ASCII needs SMTPUTF8, "
                "which the email channel does not carry"
            )
        return lead.email, None
    if not lead.phone:
        return None, "no phone number"
    if not lead.sms_consent:
        return None, "no SMS opt-in"
    if phone_kind(lead.phone) == PhoneKind.FIXED:
        return None, f"{lead.phone} is a fixed line: SMS cannot reach it"
    return lead.phone, None


@dataclass
class SendFacts:
    """What the guards of one batch read, loaded in one statement each."""

    now: datetime
    suppressed: set[tuple[str, str]]
    left: set[tuple[int, str]]
    sent: dict[tuple[int, str], list[datetime]]  # recent sends per lead and channel
    had_sms: set[int]
    recent: dict[int, list[dict[str, Any]]]

    @classmethod
    def load(
        cls, session: Session, leads: Iterable[Lead], caps: Mapping[str, Cap], now: datetime
    ) -> SendFacts:
        """Read the batch's leads' guard facts; the caps say how far back sends count."""
        by_id = {lead.id: lead for lead in leads}
        ids = sorted(by_id)
        # each address as the suppression list may hold it: written out, or hashed by an erasure
        forms = {
            form: address
            for lead in by_id.values()
            for address in (lead.email, lead.phone)
            if address
            for form in address_forms(address)
        }
        facts = cls(now, set(), set(), {}, set(), recent_activities(session, ids))
        if not ids:
            return facts
        if forms:
            rows = session.execute(_SUPPRESSED, {"addresses": sorted(forms)})
            facts.suppressed = {(channel, forms[stored]) for channel, stored in rows}
        facts.left = {(lead_id, topic) for lead_id, topic in session.execute(_LEFT, {"leads": ids})}
        if caps:
            since = now - max(cap.per for cap in caps.values())
            params = {"leads": ids, "since": since, "now": now}
            for lead_id, channel, at in session.execute(_SENT_SINCE, params):
                facts.sent.setdefault((lead_id, channel), []).append(at)
        facts.had_sms = set(session.scalars(_HAD_SMS, {"leads": ids}))
        return facts

    def cap_opens_at(self, lead_id: int, channel: str, cap: Cap | None) -> datetime | None:
        """When the frequency cap allows the next send, or None when it allows one now."""
        if cap is None:
            return None
        since = self.now - cap.per
        sent = sorted((t for t in self.sent.get((lead_id, channel), ()) if t > since), reverse=True)
        if len(sent) < cap.count:
            return None
        return sent[cap.count - 1] + cap.per

    def sending(self, lead_id: int, channel: str) -> None:
        """A send of this batch is being made now: later ones in the batch count it."""
        self.sent.setdefault((lead_id, channel), []).append(self.now)
        if channel == "sms":
            self.had_sms.add(lead_id)
