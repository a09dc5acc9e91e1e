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
from typing import Any
from urllib.parse import urlencode, urlsplit

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from channels.base import EmailMessage, SendResult, SmsMessage
from engine.db import is_postgres
from engine.delivery.context import message_context
from engine.delivery.pacing import PacingTimeout, rate_for
from engine.delivery.process import DeliveryContext
from engine.delivery.rendering import Renderer
from engine.errors import ChannelError, ErrorKind, NurtureError
from engine.funnel.topics import has_left
from engine.models import (
    OUT_OF_NURTURE,
    Delivery,
    DeliveryStatus,
    Enrolment,
    EnrolmentStatus,
    Lead,
    Suppression,
)
from engine.settings import Settings
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Cap, Sequence
from engine.workflow.windows import open_slot

log = logging.getLogger(__name__)

SENT_STATES = (DeliveryStatus.SENDING, DeliveryStatus.SENT, DeliveryStatus.UNKNOWN)


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
    Suppression.channel == bindparam("channel"), Suppression.address == bindparam("address")
)
# Sends to the lead on the channel since a moment, newest first; one being sent right now (by
# this batch or another worker) counts as sent now.
_SENT_AT = func.coalesce(Delivery.sent_at, bindparam("now"))
_SENT_SINCE = (
    select(_SENT_AT)
    .where(
        Delivery.lead_id == bindparam("lead"),
        Delivery.channel == bindparam("channel"),
        Delivery.status.in_(SENT_STATES),
        or_(
            Delivery.sent_at > bindparam("since"),
            and_(Delivery.status == DeliveryStatus.SENDING, Delivery.sent_at.is_(None)),
        ),
    )
    .order_by(_SENT_AT.desc())
    .limit(bindparam("count"))
)
_SMS_SENT = select(func.count()).where(
    Delivery.lead_id == bindparam("lead"),
    Delivery.channel == "sms",
    Delivery.status.in_(SENT_STATES),
)
_DUE = (
    select(Delivery, Enrolment, Lead)
    .join(Enrolment, Enrolment.id == Delivery.enrolment_id)
    .join(Lead, Lead.id == Delivery.lead_id)
    .where(Delivery.id == bindparam("id"))
)
_DUE_LOCKED = _DUE.with_for_update(of=Delivery, skip_locked=True)


def _suppressed(session: Session, channel: str, address: str) -> bool:
    return session.scalar(_SUPPRESSED, {"channel": channel, "address": address}) is not None


def suppress(session: Session, channel: str, address: str, reason: str, now: datetime) -> bool:
    """Add an address to the suppression list once (True then); later sends to it are skipped."""
    if _suppressed(session, channel, address):
        return False
    session.add(Suppression(channel=channel, address=address, reason=reason, created_at=now))
    return True


def _skip(delivery: Delivery, reason: str) -> None:
    delivery.status = DeliveryStatus.SKIPPED
    delivery.detail = reason


def _stale_reason(delivery: Delivery, enrolment: Enrolment, lead: Lead) -> str | None:
    """Why the lead is no longer at this step (moved on, exited, handed off), or None."""
    if enrolment.status != EnrolmentStatus.ACTIVE:
        return f"stale: enrolment ended ({enrolment.exit_reason})"
    if enrolment.pass_no != delivery.pass_no:
        return f"stale: lead moved to milestone {enrolment.milestone}"
    if lead.stage in OUT_OF_NURTURE:
        return f"stale: lead is {lead.stage}"
    return None


def _address(lead: Lead, channel: str) -> tuple[str | None, str | None]:
    """The address to use and, when there is none or no consent, why not."""
    if channel == "email":
        if not lead.email:
            return None, "no email address"
        return (lead.email, None) if lead.email_consent else (None, "no email consent")
    if not lead.phone:
        return None, "no phone number"
    return (lead.phone, None) if lead.sms_consent else (None, "no SMS opt-in")


def _cap_opens_at(
    session: Session, lead: Lead, channel: str, cap: Cap | None, now: datetime
) -> datetime | None:
    """When the frequency cap allows the next send, or None when it allows one now."""
    if cap is None:
        return None
    params = {
        "lead": lead.id,
        "channel": channel,
        "since": now - cap.per,
        "count": cap.count,
        "now": now,
    }
    sent: list[datetime] = [t for t in session.scalars(_SENT_SINCE, params) if t is not None]
    if len(sent) < cap.count:
        return None
    return sent[-1] + cap.per


def prepare(
    session: Session,
    rt: Runtime,
    settings: Settings,
    renderer: Renderer,
    delivery_id: str,
    wait: timedelta = timedelta(0),
) -> Prepared | None:
    """Guard and render a due delivery and mark it `sending`, leased for the send lease plus
    `wait` (how long it may wait behind others of its batch); None when not to send now."""
    now = rt.clock.now()
    query = _DUE_LOCKED if is_postgres(session) else _DUE
    row = session.execute(query, {"id": delivery_id}).one_or_none()
    if row is None:
        return None
    delivery, enrolment, lead = row._tuple()
    if delivery.status != DeliveryStatus.PLANNED or delivery.due_at > now:
        return None
    with session.no_autoflush:  # the guards only read: the row is written once, at the end
        prepared = _guard_and_render(session, rt, settings, renderer, delivery, enrolment, lead)
    if prepared is not None:
        delivery.lease_until = now + rt.send.lease + wait
    return prepared


def _guard_and_render(
    session: Session,
    rt: Runtime,
    settings: Settings,
    renderer: Renderer,
    delivery: Delivery,
    enrolment: Enrolment,
    lead: Lead,
) -> Prepared | None:
    """The guards and the render of `prepare`, on the locked, due delivery."""
    now, policy = rt.clock.now(), rt.send
    delivery.lease_until = None
    sequence = rt.pinned(session, enrolment.sequence, enrolment.sequence_version)
    reason = (
        "stale: sequence removed" if sequence is None else _stale_reason(delivery, enrolment, lead)
    )
    address, refusal = _address(lead, delivery.channel)
    if reason or refusal or address is None:
        _skip(delivery, reason or refusal or "no address")
        return None
    assert sequence is not None
    if _suppressed(session, delivery.channel, address):
        _skip(delivery, f"suppressed: {address}")
        return None
    # Topics are an email matter (the unsubscribe link is in emails); SMS has STOP.
    if delivery.channel == "email" and has_left(session, lead.id, sequence.topic):
        _skip(delivery, f"unsubscribed from topic {sequence.topic}")
        return None
    window, channel = sequence.send.window, delivery.channel
    slot = open_slot(policy, now, lead.timezone, window, channel)
    cap_at = _cap_opens_at(session, lead, channel, policy.caps.get(channel), now)
    if cap_at is not None and cap_at > slot:
        slot = open_slot(policy, cap_at, lead.timezone, window, channel)
    if slot > now:
        delivery.due_at = slot
        delivery.detail = f"deferred to {slot.isoformat()}"
        return None
    message = _render(session, settings, renderer, delivery, lead, sequence, address, now)
    if message is None:
        return None
    delivery.status = DeliveryStatus.SENDING
    delivery.attempts += 1
    return Prepared(delivery.id, delivery.channel, message)


def _render(
    session: Session,
    settings: Settings,
    renderer: Renderer,
    delivery: Delivery,
    lead: Lead,
    sequence: Sequence,
    address: str,
    now: datetime,
) -> Any:
    """Build the channel message; a template that fails to render fails the delivery."""
    context = message_context(session, settings, lead, delivery, sequence, now)
    try:
        if delivery.channel == "email":
            email = renderer.render_email(delivery.template, context)
            delivery.subject = email.subject
            return EmailMessage(
                delivery_id=delivery.id,
                to_email=address,
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
        first = not session.scalar(_SMS_SENT, {"lead": lead.id})
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


def record_success(
    session: Session, rt: Runtime, delivery_id: str, provider: str, message_id: str | None
) -> None:
    """The provider accepted the message: the delivery is sent for good (also when its lease
    ran out mid-call and the sweep already called it `unknown`: the answer settles it)."""
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.status.in_(UNSETTLED))
        .values(
            status=DeliveryStatus.SENT,
            sent_at=rt.clock.now(),
            provider=provider,
            provider_message_id=message_id,
            lease_until=None,
            detail=None,
        )
        .execution_options(synchronize_session=False)  # a fresh session holds no copy to sync
    )


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
        prepared = [
            prepare(session, rt, ctx.settings, ctx.renderer, delivery_id, slot * index)
            for index, delivery_id in enumerate(delivery_ids)
        ]
    answers = [_call(ctx, p) if p is not None else None for p in prepared]
    attempts = []
    with sessions.begin() as session:
        for delivery_id, answer in zip(delivery_ids, answers, strict=True):
            attempts.append(_record(session, rt, delivery_id, answer))
    return attempts


def _call(ctx: DeliveryContext, prepared: Prepared) -> SendResult | ChannelError | float:
    """Hand one prepared message to its channel, paced: the provider's result or error, or
    the seconds until a send slot frees up when none came in time."""
    channel, pacer, policy = ctx.channels[prepared.channel], ctx.pacer, ctx.rt.send
    if pacer is not None and getattr(channel, "paced", True):
        sender = getattr(prepared.message, "from_phone", "") or channel.name
        rate = rate_for(prepared.channel, sender, policy.rates) * policy.pace_headroom
        try:
            pacer.acquire(f"{prepared.channel}:{sender}", rate, timeout=policy.pace_timeout)
        except PacingTimeout as error:
            return error.retry_after
    try:
        return channel.send(prepared.message)
    except ChannelError as error:
        return error
    except Exception as error:  # noqa: BLE001 - a bug in one adapter call strands no other send
        log.exception("delivery %s: the %s channel failed", prepared.delivery_id, channel.name)
        # it may have reached the provider: never resent, like any other unknown outcome
        return ChannelError(f"{type(error).__name__}: {error}", ErrorKind.UNKNOWN)


def _record(
    session: Session,
    rt: Runtime,
    delivery_id: str,
    answer: SendResult | ChannelError | float | None,
) -> SendAttempt:
    """Write down what the channel answered for one delivery (None: it was not sent)."""
    if answer is None:
        return SendAttempt.NOT_SENT
    if isinstance(answer, float):
        repace(session, rt, delivery_id, answer)
        return SendAttempt.PACED
    if isinstance(answer, ChannelError):
        return record_failure(session, rt, delivery_id, answer)
    record_success(session, rt, delivery_id, answer.provider, answer.provider_message_id)
    return SendAttempt.SENT
