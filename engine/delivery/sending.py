"""Sending one delivery: guards, render, then planned -> sending -> sent | failed | skipped.

At most once: the `sending` state commits before the provider is called, and only a
`planned` delivery is ever picked up, so a retry or a duplicate message never resends. Only
an error that proves the provider did not take the message (TRANSIENT) plans it again; one
whose outcome is unknown (read time-out, connection lost after sending) marks it `unknown`,
and a provider webhook carrying its delivery id settles it later (`feedback.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence as Many
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeGuard, cast
from urllib.parse import urlencode, urlsplit

from sqlalchemy import Table, bindparam, case, or_, select, update
from sqlalchemy.orm import Session

from channels.base import EmailMessage, SendResult, SmsMessage
from engine.contacts import ascii_address
from engine.db import is_postgres
from engine.delivery.context import message_context
from engine.delivery.guards import SendFacts, address_of, stale_reason
from engine.delivery.links import track_links
from engine.delivery.pacing import PacingTimeout, rate_for
from engine.delivery.process import DeliveryContext
from engine.delivery.rendering import Renderer
from engine.errors import ChannelError, ErrorKind, NurtureError
from engine.funnel.erasure import address_forms
from engine.models import (
    Delivery,
    DeliveryStatus,
    Enrolment,
    Lead,
    Suppression,
)
from engine.settings import Settings
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Sequence
from engine.workflow.windows import deferral, open_slot

log = logging.getLogger(__name__)


class SendAttempt(StrEnum):
    """What one call of `send_delivery` did with its delivery."""

    SENT = "sent"  # the provider took it
    PLANNED = "planned"  # the provider could not take it now: planned again, later
    UNKNOWN = "unknown"  # the provider may have taken it: never resent, a webhook settles it
    FAILED = "failed"  # the provider refused it for good
    PACED = "paced"  # no sending slot soon enough: planned again for when one frees up
    NOT_SENT = "not sent"  # not due, or a guard skipped or deferred it: nothing reached a provider


@dataclass(frozen=True)
class Prepared:
    """A delivery that passed its guards, rendered and marked `sending`: ready for the channel."""

    delivery_id: str
    channel: str
    message: Any


_SUPPRESSED = select(Suppression.id).where(
    Suppression.channel == bindparam("channel"),
    Suppression.address.in_(bindparam("forms", expanding=True)),
)
_DUE = (
    select(Delivery, Enrolment, Lead)
    .join(Enrolment, Enrolment.id == Delivery.enrolment_id)
    .join(Lead, Lead.id == Delivery.lead_id)
    .where(Delivery.id.in_(bindparam("ids", expanding=True)))
    .order_by(Delivery.id)
)
_DUE_LOCKED = _DUE.with_for_update(of=Delivery, skip_locked=True)


def suppress(session: Session, channel: str, address: str, reason: str, now: datetime) -> bool:
    """Add an address to the suppression list once (True then); later sends to it are skipped."""
    forms = list(address_forms(address))  # also suppressed when held hashed, by an erasure
    if session.scalar(_SUPPRESSED, {"channel": channel, "forms": forms}) is not None:
        return False
    session.add(Suppression(channel=channel, address=forms[0], reason=reason, created_at=now))
    return True


def _skip(delivery: Delivery, reason: str) -> None:
    delivery.status = DeliveryStatus.SKIPPED
    delivery.detail = reason


def prepare(
    session: Session,
    rt: Runtime,
    settings: Settings,
    renderer: Renderer,
    delivery_ids: Many[str],
    wait: timedelta = timedelta(0),
    smtputf8: bool = False,
) -> list[Prepared | None]:
    """Guard and render due deliveries and mark them `sending`, each leased for the send lease
    plus `wait` per delivery before it in the batch (the pacing it may wait behind them);
    None for each not to send now. What the guards read is read once for the batch;
    `smtputf8` says whether the email channel carries non-ASCII mailboxes."""
    now = rt.clock.now()
    query = _DUE_LOCKED if is_postgres(session) else _DUE
    rows = {row[0].id: row for row in session.execute(query, {"ids": list(delivery_ids)})}
    due = {
        delivery_id: row
        for delivery_id, row in rows.items()
        if row[0].status == DeliveryStatus.PLANNED and row[0].due_at <= now
    }
    prepared: list[Prepared | None] = []
    with session.no_autoflush:  # the guards only read: the rows are written once, at the end
        facts = SendFacts.load(session, (lead for _, _, lead in due.values()), rt.send.caps, now)
        for index, delivery_id in enumerate(delivery_ids):
            row = due.get(delivery_id)
            lease = now + rt.send.lease + wait * index
            prepared.append(
                _guard_and_render(session, rt, settings, renderer, facts, lease, smtputf8, *row)
                if row
                else None
            )
    return prepared


def _guard_and_render(
    session: Session,
    rt: Runtime,
    settings: Settings,
    renderer: Renderer,
    facts: SendFacts,
    lease: datetime,
    smtputf8: bool,
    delivery: Delivery,
    enrolment: Enrolment,
    lead: Lead,
) -> Prepared | None:
    """The guards and the render of `prepare`, on one locked, due delivery: `sending` until
    `lease` when it passes."""
    now, policy = rt.clock.now(), rt.send
    delivery.lease_until = None
    sequence = rt.pinned(session, enrolment.sequence, enrolment.sequence_version)
    reason = (
        "stale: sequence removed" if sequence is None else stale_reason(delivery, enrolment, lead)
    )
    address, refusal = address_of(lead, delivery.channel, smtputf8)
    if reason or refusal or address is None:
        _skip(delivery, reason or refusal or "no address")
        return None
    assert sequence is not None
    if (delivery.channel, address) in facts.suppressed:
        _skip(delivery, f"suppressed: {address}")
        return None
    # Topics are an email matter (the unsubscribe link is in emails); SMS has STOP.
    if delivery.channel == "email" and (lead.id, sequence.topic) in facts.left:
        _skip(delivery, f"unsubscribed from topic {sequence.topic}")
        return None
    window, channel = sequence.send.window, delivery.channel
    zone = lead.zone
    slot = open_slot(policy, now, zone, window, channel)
    cap = policy.caps.get(channel)
    cap_at = facts.cap_opens_at(lead.id, channel, cap)
    limit = None  # the cap, when it is what the send waits for
    if cap_at is not None and cap_at > slot:
        slot, limit = open_slot(policy, cap_at, zone, window, channel), cap
    if slot > now:
        delivery.due_at = slot
        delivery.detail = deferral(policy, now, slot, zone, window, channel, limit)
        return None
    message = _render(settings, renderer, facts, delivery, lead, sequence, address, now)
    if message is None:
        return None
    delivery.status = DeliveryStatus.SENDING
    delivery.attempts += 1
    delivery.lease_until = lease
    facts.sending(lead.id, channel)
    return Prepared(delivery.id, delivery.channel, message)


def _render(
    settings: Settings,
    renderer: Renderer,
    facts: SendFacts,
    delivery: Delivery,
    lead: Lead,
    sequence: Sequence,
    address: str,
    now: datetime,
) -> Any:
    """Build the channel message; a template that fails to render fails the delivery."""
    recent = facts.recent.get(lead.id, [])
    context = message_context(settings, lead, delivery, sequence, recent, now)
    try:
        if delivery.channel == "email":
            email = renderer.render_email(delivery.template, context, _subject(delivery, sequence))
            if sequence.track_clicks:
                email = track_links(settings, delivery.id, email, context)
            delivery.subject = email.subject
            return EmailMessage(
                delivery_id=delivery.id,
                to_email=ascii_address(address) or address,  # IDN domains as IDNA ASCII
                # One line: a name with a line break in it is still a name to mail, not a
                # header to refuse (the channels refuse line breaks in every header).
                to_name=" ".join(context["lead"]["full_name"].split()),
                from_email=sequence.send.from_email,
                from_name=sequence.send.from_name,
                reply_to=sequence.send.reply_to,
                subject=email.subject,
                html=email.html,
                text=email.text,
                unsubscribe_url=context["unsubscribe_url"],
                categories=(sequence.name, delivery.template),
            )
        first = lead.id not in facts.had_sms
        sms = renderer.render_sms(delivery.template, context, first_message=first)
        delivery.subject = sms.body[:80]
        return SmsMessage(
            delivery_id=delivery.id,
            to_phone=address,
            from_phone=sequence.send.sms_from or "",
            body=sms.body,
            status_callback=status_callback(settings, delivery.id),
        )
    except NurtureError as error:
        delivery.status = DeliveryStatus.FAILED
        delivery.detail = f"render: {error}"
        return None


def _subject(delivery: Delivery, sequence: Sequence) -> str | None:
    """The subject line of the delivery's variant, when the variant has its own."""
    if delivery.variant is None:
        return None
    step = sequence.send_step(delivery.milestone, delivery.step)
    variant = step.variant(delivery.variant) if step is not None else None
    return variant.subject if variant is not None else None


def status_callback(settings: Settings, delivery_id: str) -> str | None:
    """Where Twilio reports on an SMS, the delivery id in the URL, so that a status callback
    maps back even to a send whose answer was lost; None for a local public URL."""
    if urlsplit(settings.public_url).hostname in (None, "localhost", "127.0.0.1", "::1"):
        return None
    query = urlencode({"delivery_id": delivery_id})
    return f"{settings.public_url}/webhooks/twilio/status?{query}"


# A send whose outcome is still open: its worker is at the provider, or the answer was lost.
# The provider's answer or its later feedback settles it as sent.
UNSETTLED = (DeliveryStatus.SENDING, DeliveryStatus.UNKNOWN)


_DELIVERIES = cast(Table, Delivery.__table__)
# Many answers in one statement: the provider accepted each message, so each delivery is sent
# for good (also when its lease ran out mid-call and the sweep already called it `unknown`).
# A sent delivery keeps its last detail, the deferral or retry note that says why it went out
# when it did; only the sweep's "worker lost" note goes, which the answer proved wrong.
_SENT = (
    update(_DELIVERIES)
    .where(
        _DELIVERIES.c.id == bindparam("b_id"),
        # not in_(): an expanding list cannot go in a statement run for many rows
        or_(*(_DELIVERIES.c.status == status for status in UNSETTLED)),
    )
    .values(
        status=DeliveryStatus.SENT,
        sent_at=bindparam("b_at"),
        provider=bindparam("b_provider"),
        provider_message_id=bindparam("b_message"),
        lease_until=None,
        detail=case(
            (_DELIVERIES.c.status == DeliveryStatus.UNKNOWN, None), else_=_DELIVERIES.c.detail
        ),
    )
)


def record_sent(session: Session, rt: Runtime, sent: Many[tuple[str, SendResult]]) -> None:
    """The provider accepted these messages (delivery id, its answer): all sent, in one go."""
    if not sent:
        return
    now = rt.clock.now()
    rows = [
        {"b_id": i, "b_at": now, "b_provider": r.provider, "b_message": r.provider_message_id}
        for i, r in sent
    ]
    session.connection().execute(_SENT, rows)  # Core: executemany, no ORM bulk mode


def record_failure(
    session: Session, rt: Runtime, delivery_id: str, error: ChannelError
) -> SendAttempt:
    """Decide what a provider error means for the delivery: planned again, or failed."""
    now = rt.clock.now()
    policy = rt.send
    # Locked: a provider webhook may be settling it at this moment (`feedback._settle`).
    delivery = session.get_one(Delivery, delivery_id, with_for_update=True)
    if delivery.status != DeliveryStatus.SENDING:
        return SendAttempt.NOT_SENT  # settled meanwhile (expired as unknown): leave it be
    delivery.lease_until = None
    detail = f"{error.kind}: {error}"
    if error.kind == ErrorKind.UNKNOWN:
        # The request went out and no answer came back: sending again could send it twice.
        delivery.status = DeliveryStatus.UNKNOWN
        delivery.detail = f"{detail}; not resent, a provider webhook settles it"
        return SendAttempt.UNKNOWN
    if error.kind in (ErrorKind.TRANSIENT, ErrorKind.CONFIGURATION) and (
        delivery.attempts < policy.max_attempts
    ):
        # The provider did not take it: planned again, later. A configuration error also
        # waits for an operator to fix the key rather than burning the step.
        delivery.status = DeliveryStatus.PLANNED
        delivery.due_at = now + policy.retry_delay(delivery.attempts, error.retry_after)
        delivery.detail = f"retry {delivery.attempts}: {detail}"
        return SendAttempt.PLANNED
    delivery.status = DeliveryStatus.FAILED
    delivery.detail = detail
    if error.kind == ErrorKind.OPTED_OUT:
        lead = session.get_one(Lead, delivery.lead_id)
        address = lead.email if delivery.channel == "email" else lead.phone
        if address:
            suppress(session, delivery.channel, address, f"provider: {error}", now)
        if delivery.channel == "sms":
            lead.sms_consent = False
    return SendAttempt.FAILED


def repace(session: Session, rt: Runtime, delivery_id: str, retry_after: float) -> None:
    """No free send slot in time: back to planned, unsent and not counted as an attempt (also
    when the sweep called it unknown meanwhile: it provably never reached a provider)."""
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.status.in_(UNSETTLED))
        .values(
            status=DeliveryStatus.PLANNED,
            due_at=rt.clock.now() + timedelta(seconds=retry_after),
            attempts=Delivery.attempts - 1,
            lease_until=None,
            detail=f"paced: next slot in {retry_after:.1f}s",
        )
        .execution_options(synchronize_session=False)
    )


_STUCK = (
    select(Delivery.id)
    .where(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_until <= bindparam("now"))
    .limit(bindparam("limit"))
)
_EXPIRE = (
    update(Delivery)
    .where(
        Delivery.id.in_(bindparam("ids", expanding=True)),
        Delivery.status == DeliveryStatus.SENDING,
    )
    .values(status=DeliveryStatus.UNKNOWN, detail="worker lost during send; not resent")
    .execution_options(synchronize_session=False)
)


def expire_stuck(session: Session, now: datetime, limit: int = 1000) -> int:
    """Deliveries left `sending` past their lease become `unknown`: never resent blindly."""
    stuck = list(session.scalars(_STUCK, {"now": now, "limit": limit}))
    if stuck:
        session.execute(_EXPIRE, {"ids": stuck})
    return len(stuck)


def send_delivery(ctx: DeliveryContext, delivery_id: str) -> SendAttempt:
    """Send one delivery end to end: a batch of one (`send_deliveries`)."""
    return send_deliveries(ctx, [delivery_id])[0]


Answer = SendResult | ChannelError | float | None  # float: paced, seconds to the next slot


def send_deliveries(ctx: DeliveryContext, delivery_ids: Many[str]) -> list[SendAttempt]:
    """Send deliveries in two transactions around the provider calls, whatever their number.

    All are guarded, rendered and marked `sending` in the first transaction: that commit is
    the at-most-once line, drawn for the batch at once. Every answer is recorded in the
    second. The pacer gives each sender its provider's rate across all workers; a delivery
    that would wait too long for its slot goes back to planned for when the slot frees up.
    Returns what happened to each delivery, in order.
    """
    sessions, rt = ctx.sessions, ctx.rt
    # Each may wait for its pacing slot behind those before it: its lease covers the wait.
    slot = timedelta(seconds=rt.send.pace_timeout if ctx.pacer is not None else 0)
    with sessions.begin() as session:
        smtputf8 = "email" in ctx.channels and ctx.channels["email"].smtputf8
        prepared = prepare(session, rt, ctx.settings, ctx.renderer, delivery_ids, slot, smtputf8)
    answers = _answers(ctx, prepared)
    with sessions.begin() as session:
        attempts = [_record(session, rt, i, a) for i, a in zip(delivery_ids, answers, strict=True)]
        sent = [(i, a) for i, a in zip(delivery_ids, answers, strict=True) if _taken(a)]
        record_sent(session, rt, sent)
    return attempts


def _taken(answer: Answer) -> TypeGuard[SendResult]:
    return isinstance(answer, SendResult)


def _answers(ctx: DeliveryContext, prepared: list[Prepared | None]) -> list[Answer]:
    """Hand the prepared messages to their channels, a channel's messages in one call (one
    SMTP session, one SendGrid request) unless its provider counts messages against a rate:
    then one at a time, each in its send slot. The answers in the order of `prepared`."""
    answers: list[Answer] = [None] * len(prepared)
    batches: dict[str, list[tuple[int, Prepared]]] = {}
    for index, ready in enumerate(prepared):
        if ready is None:
            continue
        if _paced(ctx, ready.channel) and not ctx.channels[ready.channel].paced_per_request:
            answers[index] = _slot(ctx, ready) or _call(ctx, ready.channel, [ready])[0]
        else:
            batches.setdefault(ready.channel, []).append((index, ready))
    for channel, batch in batches.items():
        paced = _slot(ctx, batch[0][1]) if _paced(ctx, channel) else None
        calls = [paced] * len(batch) if paced else _call(ctx, channel, [r for _, r in batch])
        for (index, _), answer in zip(batch, calls, strict=True):
            answers[index] = answer
    return answers


def _paced(ctx: DeliveryContext, channel: str) -> bool:
    return ctx.pacer is not None and ctx.channels[channel].paced


def _slot(ctx: DeliveryContext, prepared: Prepared) -> float | None:
    """Wait for the sender's next send slot; None once it came, or the seconds until one
    frees up when none came in time."""
    channel, pacer, policy = ctx.channels[prepared.channel], ctx.pacer, ctx.rt.send
    assert pacer is not None
    sender = getattr(prepared.message, "from_phone", "") or channel.name
    rate = rate_for(prepared.channel, sender, policy.rates) * policy.pace_headroom
    try:
        pacer.acquire(f"{prepared.channel}:{sender}", rate, timeout=policy.pace_timeout)
    except PacingTimeout as error:
        return error.retry_after
    return None


def _call(ctx: DeliveryContext, name: str, batch: list[Prepared]) -> list[Answer]:
    """One call of a channel for a batch of its messages: the provider's answer to each."""
    channel = ctx.channels[name]
    try:
        return list(channel.send_many([p.message for p in batch]))
    except Exception as error:  # noqa: BLE001 - a bug in one adapter call strands no other send
        log.exception("deliveries %s: the %s channel failed", [p.delivery_id for p in batch], name)
        # they may have reached the provider: never resent, like any other unknown outcome
        unknown = ChannelError(f"{type(error).__name__}: {error}", ErrorKind.UNKNOWN)
        return [unknown] * len(batch)


def _record(session: Session, rt: Runtime, delivery_id: str, answer: Answer) -> SendAttempt:
    """Write down what the channel answered for one delivery (None: it was not sent); the
    accepted ones are written together by `record_sent`."""
    if answer is None:
        return SendAttempt.NOT_SENT
    if isinstance(answer, float):
        repace(session, rt, delivery_id, answer)
        return SendAttempt.PACED
    if isinstance(answer, ChannelError):
        return record_failure(session, rt, delivery_id, answer)
    return SendAttempt.SENT
