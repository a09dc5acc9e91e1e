"""Provider feedback into the engine: opens and clicks score, bounces, complaints and STOP suppress.

Every provider event becomes a lead event recorded through `track()` with the idempotency id
`<provider>:<provider_event_id>`, so a webhook retried by the provider counts once, and
consequences (suppression, consent, skipped sends) run only the first time. Feedback on a
send also proves the provider took it: a delivery whose send outcome was `unknown` is settled
as `sent`, with the provider's message id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from channels.base import EMAIL, SMS, DeliveryEvent
from engine.delivery.sending import UNSETTLED, suppress
from engine.errors import InvalidLeadError
from engine.funnel.lead_fields import normalise_email, normalise_phone
from engine.funnel.leads import Identity
from engine.funnel.service import Outcome, track
from engine.models import Delivery, DeliveryStatus, Lead, Suppression
from engine.workflow.runtime import Runtime


@dataclass(frozen=True)
class FeedbackResult:
    """What one provider event did, so the webhook caller can log it and enqueue what fell due."""

    duplicate: bool
    lead_id: int | None
    delivery_id: str | None
    action: str
    track: Outcome | None = None


@dataclass(frozen=True)
class _Target:
    """The lead an event is about and, when the event names one we know, the delivery."""

    lead: Lead
    delivery: Delivery | None


_Effect = Callable[[Session, _Target, DeliveryEvent, datetime], None]
_CONSENT = {EMAIL: "email_consent", SMS: "sms_consent"}


@dataclass(frozen=True)
class _Rule:
    """How one kind of provider event on one channel enters the engine."""

    event_type: str
    action: str
    effect: _Effect | None = None


def _recipient(event: DeliveryEvent) -> str | None:
    """The event's address in the form leads store it, or None when it is not an address."""
    normalise = normalise_email if event.channel == EMAIL else normalise_phone
    try:
        return normalise(event.recipient)
    except InvalidLeadError:
        return None


def _reason(event: DeliveryEvent) -> str:
    """Why an address is suppressed, as the provider said it."""
    return f"{event.provider} {event.kind}" + (f": {event.reason}" if event.reason else "")


def _address(target: _Target, event: DeliveryEvent) -> str | None:
    """The address the provider reported on; the lead's own when the report's is unusable."""
    return _recipient(event) or (target.lead.email if event.channel == EMAIL else target.lead.phone)


def _withdraw(session: Session, target: _Target, event: DeliveryEvent, now: datetime) -> None:
    """The address refused mail (bounce, spam report, unsubscribe, STOP): never send to it again."""
    address = _address(target, event)
    if address:
        suppress(session, event.channel, address, _reason(event), now)
    setattr(target.lead, _CONSENT[event.channel], False)
    session.execute(
        update(Delivery)
        .where(
            Delivery.lead_id == target.lead.id,
            Delivery.channel == event.channel,
            Delivery.status == DeliveryStatus.PLANNED,
        )
        .values(status=DeliveryStatus.SKIPPED, detail=f"suppressed: {event.kind}")
        .execution_options(synchronize_session="fetch")
    )


def _restore(session: Session, target: _Target, event: DeliveryEvent, now: datetime) -> None:
    """The person opted back in (START, resubscribe): lift the suppression and restore consent."""
    address = _address(target, event)
    if address:
        session.execute(
            delete(Suppression).where(
                Suppression.channel == event.channel, Suppression.address == address
            )
        )
    setattr(target.lead, _CONSENT[event.channel], True)


def _note_failure(session: Session, target: _Target, event: DeliveryEvent, now: datetime) -> None:
    """The provider took the message, the carrier or mailbox did not: say so, stay `sent`."""
    delivery = target.delivery
    if delivery is not None and delivery.status == DeliveryStatus.SENT:
        delivery.detail = f"{event.kind} after sending: {event.reason or 'no reason given'}"


RULES: dict[tuple[str, str], _Rule] = {
    (EMAIL, "delivered"): _Rule("email_delivered", "recorded"),
    (EMAIL, "opened"): _Rule("email_opened", "scored"),
    (EMAIL, "clicked"): _Rule("email_clicked", "scored"),
    (EMAIL, "bounced"): _Rule("bounced", "suppressed", _withdraw),
    (EMAIL, "complained"): _Rule("spam_reported", "suppressed", _withdraw),
    (EMAIL, "unsubscribed"): _Rule("unsubscribed", "opted_out", _withdraw),
    (EMAIL, "opted_in"): _Rule("resubscribed", "opted_in", _restore),
    (EMAIL, "failed"): _Rule("email_failed", "failed", _note_failure),
    (SMS, "delivered"): _Rule("sms_delivered", "recorded"),
    (SMS, "failed"): _Rule("sms_failed", "failed", _note_failure),
    (SMS, "opted_out"): _Rule("sms_opted_out", "opted_out", _withdraw),
    (SMS, "opted_in"): _Rule("sms_opted_in", "opted_in", _restore),
    (SMS, "help"): _Rule("sms_help", "recorded"),
    (SMS, "replied"): _Rule("sms_replied", "replied"),
}


def _settle(delivery: Delivery, event: DeliveryEvent) -> bool:
    """The provider reports on this send, so it took it: an `unknown` delivery (or one still
    `sending`, its worker lost or not yet done recording) is `sent`, never to be resent.
    True when this settled it."""
    if delivery.channel != event.channel or delivery.status not in UNSETTLED:
        return False
    delivery.status = DeliveryStatus.SENT
    delivery.sent_at = delivery.sent_at or event.occurred_at
    delivery.provider = event.provider
    delivery.provider_message_id = delivery.provider_message_id or event.provider_message_id
    delivery.lease_until = None
    delivery.detail = f"settled as sent by {event.provider} feedback ({event.kind})"
    return True


def _rule(event: DeliveryEvent) -> _Rule | None:
    """The rule for an event, or None when its kind means nothing on its channel."""
    # A SendGrid `blocked` bounce refuses this message (reputation, content), not the address:
    # it is a failure of the send and suppresses nothing.
    if event.kind == "bounced" and event.detail.get("type") == "blocked":
        return RULES[(EMAIL, "failed")]
    return RULES.get((event.channel, event.kind))


def _delivery(session: Session, event: DeliveryEvent) -> Delivery | None:
    """The delivery the event reports on: by our delivery id, else by the provider's message id.

    Locked, since a worker may be recording the same send's outcome at this moment.
    """
    if event.delivery_id:
        delivery = session.get(Delivery, event.delivery_id, with_for_update=True)
        if delivery is not None:
            return delivery
    if event.provider_message_id:
        query = select(Delivery).where(Delivery.provider_message_id == event.provider_message_id)
        return session.scalars(query.limit(1).with_for_update()).first()
    return None


def _find(session: Session, event: DeliveryEvent) -> _Target | None:
    """The delivery and its lead, else the lead with the event's address (inbound SMS)."""
    delivery = _delivery(session, event)
    if delivery is not None:
        return _Target(session.get_one(Lead, delivery.lead_id), delivery)
    address = _recipient(event)
    if address is None:
        return None
    column = Lead.email if event.channel == EMAIL else Lead.phone
    lead = session.scalars(select(Lead).where(column == address)).one_or_none()
    return None if lead is None else _Target(lead, None)


def _properties(event: DeliveryEvent, delivery: Delivery | None) -> dict[str, Any]:
    """What scoring rules and conditions may match on: the send it came from, url, reason, body."""
    properties: dict[str, Any] = {"provider": event.provider}
    if delivery is not None:
        properties |= {
            "delivery_id": delivery.id,
            "sequence": delivery.sequence,
            "template": delivery.template,
        }
    extra = {"url": event.url, "reason": event.reason, "body": event.body}
    return properties | {key: _text(value) for key, value in extra.items() if value is not None}


def _event_key(event: DeliveryEvent) -> str:
    """The idempotency key of a provider event; an id too long for the column is hashed."""
    key = _text(f"{event.provider}:{event.provider_event_id}")
    if len(key) <= 200:
        return key
    return f"{event.provider}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def _text(value: str) -> str:
    """Provider text as both databases keep it: NUL and lone surrogates do not survive."""
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _accepted(session: Session, event: DeliveryEvent) -> FeedbackResult:
    """The provider says it has the message: settle its delivery if the send's answer was lost;
    nothing else happens, so no lead event is recorded (one per send would add nothing)."""
    delivery = _delivery(session, event)
    if delivery is None or not _settle(delivery, event):
        return FeedbackResult(False, None, None, "ignored")
    return FeedbackResult(False, delivery.lead_id, delivery.id, "settled")


def record_delivery_event(session: Session, rt: Runtime, event: DeliveryEvent) -> FeedbackResult:
    """Record one provider event against its delivery's lead and apply what it means, once.

    `action` is "ignored" for a duplicate (`duplicate` says so) and for a kind that means
    nothing on its channel, "unknown_recipient" when no delivery or lead matches: feedback
    never creates a lead. A refusal from an address no lead has (a STOP from a number not yet
    imported) still suppresses it: "suppressed", a duplicate when it already was.
    The caller owns the transaction.
    """
    if event.kind == "accepted":
        return _accepted(session, event)
    rule = _rule(event)
    if rule is None:
        return FeedbackResult(False, None, None, "ignored")
    target = _find(session, event)
    if target is None:
        address = _recipient(event)
        if rule.effect is _withdraw and address:
            added = suppress(session, event.channel, address, _reason(event), rt.clock.now())
            return FeedbackResult(not added, None, None, "suppressed")
        return FeedbackResult(False, None, None, "unknown_recipient")
    delivery_id = target.delivery.id if target.delivery is not None else None
    if target.delivery is not None:
        _settle(target.delivery, event)
    # The lead's stored identity key, so `track()` finds it and changes nothing about it.
    column, value = Identity.of(target.lead).key()
    result = track(
        session,
        rt,
        {column: value},
        rule.event_type,
        _properties(event, target.delivery),
        occurred_at=event.occurred_at,
        event_id=_event_key(event),
        source=event.provider,
    )
    if result.duplicate:
        return FeedbackResult(True, target.lead.id, delivery_id, "ignored", result)
    if rule.effect is not None:
        rule.effect(session, target, event, rt.clock.now())
    return FeedbackResult(False, target.lead.id, delivery_id, rule.action, result)
