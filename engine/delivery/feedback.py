"""Provider feedback into the engine: opens and clicks score, bounces, complaints and STOP suppress.

Every provider event becomes a lead event recorded through `record()` with the idempotency id
`<provider>:<provider_event_id>`, so a webhook retried by the provider counts once, and
consequences (suppression, consent, skipped sends) run only the first time. Feedback on a
send also proves the provider took it: a delivery whose send outcome was `unknown` is settled
as `sent`, with the provider's message id. A webhook's many events are one pass
(`record_delivery_events`) with the answers and changes of the same events one by one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, or_, select, update
from sqlalchemy.orm import Session

from channels.base import EMAIL, SMS, DeliveryEvent
from engine.contacts import email_key
from engine.delivery.links import tracked_click_key
from engine.delivery.sending import UNSETTLED, suppress
from engine.errors import InvalidLeadError
from engine.funnel.erasure import address_forms
from engine.funnel.lead_fields import normalise_email, normalise_phone
from engine.funnel.leads import Identity, lock_leads
from engine.funnel.service import NewEvent, Outcome, record
from engine.models import Delivery, DeliveryStatus, Lead, LeadAlias, Suppression
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
    """The address refused mail (bounce, spam report, unsubscribe, STOP): never send to it again.

    The lead's consent goes too, unless only an address it no longer has bounced (one it
    changed, or a merged lead's): that says nothing of the address it has now.
    """
    address = _address(target, event)
    if address:
        suppress(session, event.channel, address, _reason(event), now)
    if event.kind == "bounced" and address and not _current(target.lead, event.channel, address):
        return
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


def _current(lead: Lead, channel: str, address: str) -> bool:
    """True when `address` is the lead's own address on the channel (not a merged lead's)."""
    if channel == EMAIL:
        return lead.email_key == email_key(address)
    return lead.phone == address


def _restore(session: Session, target: _Target, event: DeliveryEvent, now: datetime) -> None:
    """The person opted back in (START, resubscribe): lift the suppression and restore consent."""
    address = _address(target, event)
    if address:
        session.execute(
            delete(Suppression).where(
                Suppression.channel == event.channel,
                Suppression.address.in_(address_forms(address)),
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
    """The idempotency key of a provider event; an id too long for the column is hashed. A
    click on one of our tracked links takes the key our redirect records it under."""
    if event.kind == "clicked" and event.url and (key := tracked_click_key(event.url)):
        return key
    key = _text(f"{event.provider}:{event.provider_event_id}")
    if len(key) <= 200:
        return key
    return f"{event.provider}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def _text(value: str) -> str:
    """Provider text as both databases keep it: NUL and lone surrogates do not survive."""
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _column(channel: str) -> str:
    """The lead column a channel's addresses are looked up in."""
    return "email_key" if channel == EMAIL else "phone"


_ALIAS_COLUMN = {"email": "email_key", "phone": "phone"}  # the column an alias stands in for


@dataclass
class _Known:
    """The deliveries and leads a batch of provider events may be about, read and locked once."""

    deliveries: dict[str, Delivery]
    by_message: dict[str, Delivery]
    leads: dict[int, Lead]
    by_address: dict[tuple[str, str], Lead]

    @classmethod
    def load(cls, session: Session, events: Sequence[DeliveryEvent]) -> _Known:
        """One query for the deliveries (by our id or the provider's message id), one for
        their leads and the leads with the events' addresses (their own, or a merged lead's
        left as an alias); both locked in id order, since a worker may be recording a send's
        outcome and another request the same lead's events.
        """
        ids = {event.delivery_id for event in events if event.delivery_id}
        messages = {event.provider_message_id for event in events if event.provider_message_id}
        keys = {"ids": sorted(ids), "messages": sorted(messages)}
        found = list(session.scalars(_LOCKED_DELIVERIES, keys))
        by_message: dict[str, Delivery] = {}
        for delivery in found:
            if delivery.provider_message_id:
                by_message.setdefault(delivery.provider_message_id, delivery)
        addresses = {
            (_column(e.channel), email_key(a)) for e in events if (a := _recipient(e)) is not None
        }
        wanted = {
            "ids": sorted({delivery.lead_id for delivery in found}),
            "emails": sorted(address for column, address in addresses if column == "email_key"),
            "phones": sorted(address for column, address in addresses if column == "phone"),
        }
        leads = {lead.id: lead for lead in session.scalars(_LOCKED_LEADS, wanted)}
        aliases = session.execute(_ALIASES, wanted).all()
        tried: set[int] = set()  # ids are never reused: each is tried once, so this ends
        while missing := {owner for _, _, owner in aliases} - leads.keys() - tried:
            # merged on while this waited for the locks: the survivors are locked too
            tried |= missing
            leads |= lock_leads(session, missing)
            aliases = session.execute(_ALIASES, wanted).all()
        by_address = {
            (_ALIAS_COLUMN[name], value): leads[owner]
            for name, value, owner in aliases
            if owner in leads
        }
        by_address.update(
            ((column, address), lead)
            for lead in leads.values()
            for column in ("email_key", "phone")
            if (address := getattr(lead, column))
        )
        return cls({d.id: d for d in found}, by_message, leads, by_address)

    def delivery(self, event: DeliveryEvent) -> Delivery | None:
        """The delivery the event reports on: by our delivery id, else by the provider's
        message id (the lowest delivery id when several carry it)."""
        delivery = self.deliveries.get(event.delivery_id) if event.delivery_id else None
        if delivery is None and event.provider_message_id:
            return self.by_message.get(event.provider_message_id)
        return delivery

    def target(self, event: DeliveryEvent) -> _Target | None:
        """The delivery and its lead, else the lead with the event's address (inbound SMS)."""
        delivery = self.delivery(event)
        if delivery is not None:
            return _Target(self.leads[delivery.lead_id], delivery)
        address = _recipient(event)
        key = email_key(address) if address else None
        lead = self.by_address.get((_column(event.channel), key)) if key else None
        return None if lead is None else _Target(lead, None)

    def settle(self, delivery: Delivery, event: DeliveryEvent) -> bool:
        """`_settle`, and a message id it gave the delivery finds it for the events after."""
        if not _settle(delivery, event):
            return False
        if delivery.provider_message_id:
            self.by_message.setdefault(delivery.provider_message_id, delivery)
        return True


_LOCKED_DELIVERIES = (
    select(Delivery)
    .where(
        or_(
            Delivery.id.in_(bindparam("ids", expanding=True)),
            Delivery.provider_message_id.in_(bindparam("messages", expanding=True)),
        )
    )
    .order_by(Delivery.id)
    .with_for_update()
)
# The identities of merged leads among the events' addresses: (field, value, survivor id).
_ALIASES = select(LeadAlias.field, LeadAlias.value, LeadAlias.lead_id).where(
    or_(
        and_(LeadAlias.field == "email", LeadAlias.value.in_(bindparam("emails", expanding=True))),
        and_(LeadAlias.field == "phone", LeadAlias.value.in_(bindparam("phones", expanding=True))),
    )
)
# The deliveries' leads and the leads with the events' addresses, as their own or as an
# alias (a lead merged into them), locked in id order in one statement.
_LOCKED_LEADS = (
    select(Lead)
    .where(
        or_(
            Lead.id.in_(bindparam("ids", expanding=True)),
            Lead.email_key.in_(bindparam("emails", expanding=True)),
            Lead.phone.in_(bindparam("phones", expanding=True)),
            Lead.id.in_(_ALIASES.with_only_columns(LeadAlias.lead_id).scalar_subquery()),
        )
    )
    .order_by(Lead.id)
    .with_for_update()
)


@dataclass(frozen=True)
class _Turn:
    """A provider event about a lead, to record in order and then apply its rule's effect."""

    event: DeliveryEvent
    rule: _Rule
    target: _Target

    def new_event(self) -> NewEvent:
        """The lead event to record: keyed by the lead's stored identity, so `record` finds
        it and changes nothing about it; idempotent by the provider's event id."""
        column, value = Identity.of(self.target.lead).key()
        return NewEvent(
            {column: value},
            self.rule.event_type,
            _properties(self.event, self.target.delivery),
            self.event.occurred_at,
            _event_key(self.event),
            self.event.provider,
        )

    def finish(self, session: Session, outcome: Outcome, now: datetime) -> FeedbackResult:
        """The answer once recorded: the rule's effect applies the first time only."""
        delivery = self.target.delivery
        delivery_id = delivery.id if delivery is not None else None
        lead_id = self.target.lead.id
        if outcome.duplicate:
            return FeedbackResult(True, lead_id, delivery_id, "ignored", outcome)
        if self.rule.effect is not None:
            self.rule.effect(session, self.target, self.event, now)
        return FeedbackResult(False, lead_id, delivery_id, self.rule.action, outcome)


@dataclass(frozen=True)
class _Refusal:
    """A refusal (bounce, STOP) from an address no lead has: it suppresses the address only."""

    event: DeliveryEvent
    address: str
    reason: str

    def finish(self, session: Session, now: datetime) -> FeedbackResult:
        """Suppressed once: a duplicate when the address already was."""
        added = suppress(session, self.event.channel, self.address, self.reason, now)
        return FeedbackResult(not added, None, None, "suppressed")


_Step = _Turn | _Refusal
# Effects that write what recording a later event of the same lead reads: consent (enrolment
# needs some) and planned sends (a milestone move skips those left with its own reason).
_LEAD_EFFECTS = (_withdraw, _restore)


def _step(known: _Known, event: DeliveryEvent) -> FeedbackResult | _Step:
    """An event's answer when it records nothing, else its step; its delivery is settled."""
    if event.kind == "accepted":
        return _accepted(known, event)
    rule = _rule(event)
    if rule is None:
        return FeedbackResult(False, None, None, "ignored")
    target = known.target(event)
    if target is None:
        address = _recipient(event)
        if rule.effect is _withdraw and address:
            return _Refusal(event, address, _reason(event))
        return FeedbackResult(False, None, None, "unknown_recipient")
    if target.lead.erased_at is not None:
        return _after_erasure(event, rule)
    if target.delivery is not None:
        known.settle(target.delivery, event)
    return _Turn(event, rule, target)


def _after_erasure(event: DeliveryEvent, rule: _Rule) -> FeedbackResult | _Step:
    """Feedback on a send to a lead erased since: nothing is written back onto its tombstone
    (no event, no settled send, no provider id). A refusal still suppresses the address, as
    its hash and with no provider words, so it stays blocked should the person come back."""
    address = _recipient(event)
    if rule.effect is _withdraw and address:
        return _Refusal(event, address_forms(address)[1], f"{event.provider} {event.kind}")
    return FeedbackResult(False, None, None, "ignored")


def _accepted(known: _Known, event: DeliveryEvent) -> FeedbackResult:
    """The provider says it has the message: settle its delivery if the send's answer was lost;
    nothing else happens, so no lead event is recorded (one per send would add nothing)."""
    delivery = known.delivery(event)
    if delivery is not None and known.leads[delivery.lead_id].erased_at is not None:
        return FeedbackResult(False, None, None, "ignored")  # see `_after_erasure`
    if delivery is None or not known.settle(delivery, event):
        return FeedbackResult(False, None, None, "ignored")
    return FeedbackResult(False, delivery.lead_id, delivery.id, "settled")


def _segments(steps: Sequence[_Step]) -> Iterator[list[_Step]]:
    """The steps in runs recorded together: a run ends before an event of a lead that a
    withdrawal or restore earlier in the run changed, so it sees that change as it would
    have one by one. Other effects write nothing that recording reads."""
    run: list[_Step] = []
    changed: set[int] = set()
    for step in steps:
        lead_id = step.target.lead.id if isinstance(step, _Turn) else None
        if lead_id in changed:
            yield run
            run, changed = [], set()
        run.append(step)
        if isinstance(step, _Turn) and step.rule.effect in _LEAD_EFFECTS:
            changed.add(step.target.lead.id)
    if run:
        yield run


def _record_run(session: Session, rt: Runtime, run: Sequence[_Step]) -> list[FeedbackResult]:
    """Record a run's lead events in one `record` call, then apply their effects in order."""
    new = [step.new_event() for step in run if isinstance(step, _Turn)]
    outcomes = iter(record(session, rt, new) if new else [])
    now = rt.clock.now()
    return [
        step.finish(session, next(outcomes), now)
        if isinstance(step, _Turn)
        else step.finish(session, now)
        for step in run
    ]


def record_delivery_events(
    session: Session, rt: Runtime, events: Sequence[DeliveryEvent]
) -> list[FeedbackResult]:
    """Record provider events against their deliveries' leads and apply what each means,
    once; one answer per event, in order, as if they came one by one.

    The deliveries and leads are read and locked once, the lead events recorded with one
    `record` call (cut where an opt-out or opt-in would change what a later event of the same
    lead sees). `action` is "ignored" for a duplicate (`duplicate` says so) and for a kind
    that means nothing on its channel, "unknown_recipient" when no delivery or lead matches:
    feedback never creates a lead. A refusal from an address no lead has (a STOP from a
    number not yet imported) still suppresses it: "suppressed", a duplicate when it already
    was. The caller owns the transaction.
    """
    wanted = [event for event in events if event.kind == "accepted" or _rule(event)]
    known = _Known.load(session, wanted)
    answers = [_step(known, event) for event in events]
    steps = [answer for answer in answers if not isinstance(answer, FeedbackResult)]
    recorded = iter(
        [result for run in _segments(steps) for result in _record_run(session, rt, run)]
    )
    return [answer if isinstance(answer, FeedbackResult) else next(recorded) for answer in answers]


def record_delivery_event(session: Session, rt: Runtime, event: DeliveryEvent) -> FeedbackResult:
    """Record one provider event: a batch of one (`record_delivery_events`)."""
    return record_delivery_events(session, rt, [event])[0]
