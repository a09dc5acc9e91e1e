"""Handing a lead to sales: the signed, idempotent CRM webhook, retried until acknowledged."""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from enum import StrEnum
from html import escape
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from channels.base import EMAIL, Channel, EmailMessage
from engine.db import claim
from engine.delivery.context import lead_view
from engine.delivery.process import CrmTarget, DeliveryContext
from engine.models import Handoff, HandoffStatus, Lead, Stage
from engine.workflow.runtime import Runtime


class HandoffAttempt(StrEnum):
    """What one attempt to hand a lead over did."""

    DELIVERED = "delivered"  # the CRM acknowledged it (now or before)
    RECORDED = "recorded"  # no CRM configured: the database row is the handoff
    RETRY = "retry"  # the CRM refused or was unreachable: tried again after a backoff
    WITHDRAWN = "withdrawn"  # its lead was erased first: nothing sent, nobody notified


SIGNATURE_HEADER = "X-Nurture-Signature"
TIMESTAMP_HEADER = "X-Nurture-Timestamp"
MAX_BACKOFF = timedelta(hours=1)


def document(session: Session, handoff: Handoff) -> dict[str, Any]:
    """The JSON a CRM receives: who the lead is, its score breakdown, why, and what it did."""
    lead = session.get_one(Lead, handoff.lead_id)
    return {
        "handoff_id": handoff.id,
        "crossing": handoff.crossing,
        "created_at": handoff.created_at.isoformat(),
        "owner": handoff.owner,
        "lead": {k: v for k, v in lead_view(lead).items() if k != "stage"}
        | {"stage": Stage.SQL.value},
        "score": handoff.score,
        "reasons": handoff.reasons,
    }


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` HMAC over `timestamp.body`, so receivers can reject forgeries and replays."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def post(
    url: str,
    secret: str,
    idempotency_key: str,
    payload: dict[str, Any],
    now: datetime,
    timeout: float = 10.0,
) -> int:
    """POST the document; returns the HTTP status (0 when the receiver could not be reached)."""
    body = json.dumps(payload, sort_keys=True, default=str).encode()
    timestamp = str(int(now.timestamp()))
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            "User-Agent": "nurture-handoff/1",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, TimeoutError, OSError):
        return 0


_DUE_HANDOFFS = (
    select(Handoff.id)
    .where(
        Handoff.status == HandoffStatus.PENDING,
        Handoff.next_attempt_at <= bindparam("now"),  # delivered ones hold NULL: out of range
    )
    .order_by(Handoff.next_attempt_at)
    .limit(bindparam("limit"))
)


def claim_due_handoffs(
    session: Session, now: datetime, limit: int, lease: timedelta = timedelta(minutes=2)
) -> list[int]:
    """Pending handoffs whose next attempt is due, leased so one worker delivers each."""
    params = {"now": now, "limit": limit, "lease": now + lease}
    return claim(session, _DUE_HANDOFFS, params, Handoff, "next_attempt_at")


def hand_over(ctx: DeliveryContext, handoff_id: int) -> HandoffAttempt:
    """Deliver a handoff to the CRM, then note it to its owner when sending.yml asks for that."""
    attempt = deliver_handoff(ctx.sessions, ctx.rt, ctx.crm, handoff_id)
    done = attempt not in (HandoffAttempt.RETRY, HandoffAttempt.WITHDRAWN)
    if done and ctx.rt.assignment.notify_owner:
        sender = ctx.settings.notify_from
        notify_owner(ctx.sessions, ctx.rt, ctx.channels[EMAIL], sender, handoff_id)
    return attempt


def deliver_handoff(
    sessions: sessionmaker[Session], rt: Runtime, crm: CrmTarget, handoff_id: int
) -> HandoffAttempt:
    """Deliver one handoff; 2xx marks it delivered, anything else schedules a retry with backoff."""
    with sessions.begin() as session:
        handoff = session.get_one(Handoff, handoff_id)
        if handoff.status == HandoffStatus.WITHDRAWN:
            return HandoffAttempt.WITHDRAWN
        if handoff.status != HandoffStatus.PENDING:
            return HandoffAttempt.DELIVERED
        if not crm.url:
            # No CRM configured: the record in the database is the handoff.
            handoff.status = HandoffStatus.DELIVERED
            handoff.delivered_at = rt.clock.now()
            handoff.next_attempt_at = None
            return HandoffAttempt.RECORDED
        payload = document(session, handoff)
    status = post(crm.url, crm.secret, f"handoff-{handoff_id}", payload, rt.clock.now())
    with sessions.begin() as session:
        handoff = session.get_one(Handoff, handoff_id, with_for_update=True)
        if handoff.status == HandoffStatus.WITHDRAWN:
            return HandoffAttempt.WITHDRAWN  # erased while it was posted: keep it withdrawn
        handoff.attempts += 1
        now = rt.clock.now()
        if 200 <= status < 300:
            handoff.status = HandoffStatus.DELIVERED
            handoff.delivered_at = now
            handoff.next_attempt_at = None
            return HandoffAttempt.DELIVERED
        backoff = min(timedelta(seconds=5) * 2 ** (handoff.attempts - 1), MAX_BACKOFF)
        handoff.next_attempt_at = now + backoff
        return HandoffAttempt.RETRY


def owner_email(document: dict[str, Any], from_email: str) -> Any:
    """The note that tells the assigned salesperson who is waiting and why."""
    lead, score = document["lead"], document["score"]
    name = (
        " ".join(p for p in (lead.get("first_name"), lead.get("last_name")) if p) or lead["email"]
    )
    reasons = [f"{r['rule']}: {r['points']:+g}" for r in score.get("rules", [])[:8]]
    activity = [
        f"{a['occurred_at'][:16]} {a['type']}" for a in document["reasons"]["recent_activity"][:8]
    ]
    lines = [
        f"{name} ({lead.get('company') or 'no company'}, {lead.get('title') or 'no title'})",
        f"email {lead.get('email')} phone {lead.get('phone') or '-'}",
        f"score {score['total']:g} (fit {score['fit']:g}, engagement {score['engagement']:g})",
        "",
        "Why:",
        *reasons,
        "",
        "Recent activity:",
        *activity,
    ]
    text = "\n".join(lines)
    subject = f"New sales-qualified lead: {name}"[:200].replace("\n", " ").replace("\r", " ")
    return EmailMessage(
        delivery_id=f"handoff-{document['handoff_id']}",
        to_email=document["owner"],
        to_name="",
        from_email=from_email,
        from_name="nurture",
        subject=subject,
        html=f"<pre>{escape(text)}</pre>",
        text=text,
    )


def notify_owner(
    sessions: sessionmaker[Session], rt: Runtime, channel: Channel, from_email: str, handoff_id: int
) -> bool:
    """Email the owner once: marked before the send, like every delivery, so never twice."""
    with sessions.begin() as session:
        handoff = session.get_one(Handoff, handoff_id)
        if (
            handoff.owner is None
            or handoff.owner_notified_at is not None
            or handoff.status == HandoffStatus.WITHDRAWN
        ):
            return False
        handoff.owner_notified_at = rt.clock.now()
        payload = document(session, handoff)
    channel.send(owner_email(payload, from_email))
    return True
