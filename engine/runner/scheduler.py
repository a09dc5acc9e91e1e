"""The scheduler: claim what is due in batches under a lease; the database stays the truth."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from engine.db import claim
from engine.funnel.journey import advance, lock_enrolment
from engine.funnel.leads import lock_lead
from engine.models import (
    Delivery,
    DeliveryStatus,
    Enrolment,
    EnrolmentStatus,
    Event,
    EventStatus,
    Lead,
)
from engine.workflow.runtime import Runtime

# How long a claimed row belongs to the worker it was handed to before it is due again.
DEFAULT_LEASE = timedelta(minutes=5)


def claim_due_enrolments(
    session: Session, now: datetime, limit: int, lease: timedelta = DEFAULT_LEASE
) -> list[int]:
    """Claim up to `limit` due enrolments: rows locked with SKIP LOCKED, leased, ids returned.

    Several schedulers can run this at once on PostgreSQL; each row goes to one of them.
    A message lost after the claim (broker flushed, worker killed) makes the row due again
    once the lease runs out.
    """
    query = (
        select(Enrolment.id)
        .where(
            Enrolment.next_run_at <= now,
            Enrolment.status == EnrolmentStatus.ACTIVE,
            or_(Enrolment.lease_until.is_(None), Enrolment.lease_until <= now),
        )
        .order_by(Enrolment.next_run_at)
        .limit(limit)
    )
    return claim(session, query, Enrolment, lease_until=now + lease)


def claim_due_deliveries(
    session: Session, now: datetime, limit: int, lease: timedelta = DEFAULT_LEASE
) -> list[str]:
    """Claim planned deliveries that are due, like enrolments: SKIP LOCKED, leased, by index."""
    query = (
        select(Delivery.id)
        .where(
            Delivery.status == DeliveryStatus.PLANNED,
            Delivery.due_at <= now,
            or_(Delivery.lease_until.is_(None), Delivery.lease_until <= now),
        )
        .order_by(Delivery.due_at)
        .limit(limit)
    )
    return claim(session, query, Delivery, lease_until=now + lease)


def claim_failed_events(
    session: Session, now: datetime, limit: int, lease: timedelta = DEFAULT_LEASE
) -> list[int]:
    """Claim failed events whose retry is due, oldest first; the lease is `retry_at` moved on.

    A retry that fails again sets its own backoff; one that is lost comes back after the lease.
    """
    query = (
        select(Event.id)
        .where(Event.status == EventStatus.FAILED, Event.retry_at <= now)
        .order_by(Event.retry_at, Event.id)
        .limit(limit)
    )
    return claim(session, query, Event, retry_at=now + lease)


def claim_due_leads(session: Session, now: datetime, limit: int) -> list[int]:
    """Leads whose decay or inactivity fell due, by index; locked but not leased, since a
    refresh that runs twice finds nothing due the second time."""
    query = (
        select(Lead.id)
        .where(or_(Lead.decay_due_at <= now, Lead.inactive_due_at <= now))
        .limit(limit)
    )
    return claim(session, query, Lead)


def advance_enrolment(session: Session, rt: Runtime, enrolment_id: int) -> list[str]:
    """Advance one claimed enrolment under its row lock; returns the ids of sends due now.

    The lead's row is locked first, in the order event processing takes them (lead, then
    its enrolments): planning a send references the lead, and taking the two locks the other
    way round deadlocks against an event for the same lead.
    """
    lead_id = session.scalar(select(Enrolment.lead_id).where(Enrolment.id == enrolment_id))
    if lead_id is None:
        return []
    lock_lead(session, lead_id)
    enrolment = lock_enrolment(session, enrolment_id)
    if enrolment is None:
        return []
    planned = advance(session, rt, enrolment)
    now = rt.clock.now()
    return [d.id for d in planned if d.due_at <= now]
