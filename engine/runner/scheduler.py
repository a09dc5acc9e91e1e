"""The scheduler: claim what is due in batches under a lease; the database stays the truth."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, or_, select
from sqlalchemy.orm import Session

from engine.clock import as_utc
from engine.db import claim
from engine.funnel.journey import advance, lock_enrolments
from engine.funnel.leads import lock_leads
from engine.funnel.memo import Memo, remembering
from engine.models import (
    BacktestJob,
    Delivery,
    DeliveryStatus,
    Enrolment,
    EnrolmentStatus,
    Event,
    EventStatus,
    Handoff,
    HandoffStatus,
    JobStatus,
    Lead,
)
from engine.workflow.runtime import Runtime

# How long a claimed row belongs to the worker it was handed to before it is due again.
DEFAULT_LEASE = timedelta(minutes=5)
MAX_JOB_ATTEMPTS = 3  # runs of a backtest job whose worker died, before it is failed


@dataclass(frozen=True)
class Horizon:
    """The earliest moment each kind of scheduled work falls due (None: nothing of that kind)."""

    events: datetime | None  # failed events awaiting their retry
    leads: datetime | None  # decay or inactivity
    enrolments: datetime | None
    deliveries: datetime | None
    handoffs: datetime | None
    stuck: datetime | None  # sends whose lease runs out
    jobs: datetime | None = None  # backtests whose message was lost or whose worker died

    def due(self, moment: datetime | None, now: datetime) -> bool:
        """True when `moment` (one of the fields) has come by `now`."""
        return moment is not None and moment <= now

    def earliest(self) -> datetime | None:
        """The first moment anything falls due."""
        # not astuple(): it deep-copies every field, once per simulated step
        moments = [m for f in fields(self) if (m := getattr(self, f.name)) is not None]
        return min(moments) if moments else None


def _earliest(column: Any, *where: Any) -> Any:
    return select(func.min(column)).where(*where).scalar_subquery()


_UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)

# One statement tells a scheduler pass which kinds of work to claim, and the simulation when
# to stop the clock next; each minimum reads the first entry of an index.
_HORIZON = select(
    _earliest(Event.retry_at, Event.status == EventStatus.FAILED),
    _earliest(Lead.decay_due_at),
    _earliest(Lead.inactive_due_at),
    _earliest(Enrolment.next_run_at, Enrolment.status == EnrolmentStatus.ACTIVE),
    _earliest(Delivery.due_at, Delivery.status == DeliveryStatus.PLANNED),
    _earliest(Handoff.next_attempt_at, Handoff.status == HandoffStatus.PENDING),
    _earliest(Delivery.lease_until, Delivery.status == DeliveryStatus.SENDING),
    _earliest(BacktestJob.due_at, BacktestJob.status.in_(_UNFINISHED)),
)


def horizon(session: Session) -> Horizon:
    """When each kind of work falls due next, in one statement (leases aside: a claim skips
    leased rows, so a kind may be due and still claim nothing)."""
    events, decay, inactive, enrolments, deliveries, handoffs, stuck, jobs = (
        as_utc(m) if m is not None else None for m in session.execute(_HORIZON).one()
    )
    leads = min((m for m in (decay, inactive) if m is not None), default=None)
    return Horizon(events, leads, enrolments, deliveries, handoffs, stuck, jobs)


# Claims are built once: `now`, `limit` and `lease` are parameters of each pass.
_DUE_ENROLMENTS = (
    select(Enrolment.id)
    .where(
        Enrolment.next_run_at <= bindparam("now"),
        Enrolment.status == EnrolmentStatus.ACTIVE,
        or_(Enrolment.lease_until.is_(None), Enrolment.lease_until <= bindparam("now")),
    )
    .order_by(Enrolment.next_run_at)
    .limit(bindparam("limit"))
)
_DUE_DELIVERIES = (
    select(Delivery.id)
    .where(
        Delivery.status == DeliveryStatus.PLANNED,
        Delivery.due_at <= bindparam("now"),
        or_(Delivery.lease_until.is_(None), Delivery.lease_until <= bindparam("now")),
    )
    .order_by(Delivery.due_at)
    .limit(bindparam("limit"))
)
_FAILED_EVENTS = (
    select(Event.id)
    .where(Event.status == EventStatus.FAILED, Event.retry_at <= bindparam("now"))
    .order_by(Event.retry_at, Event.id)
    .limit(bindparam("limit"))
)
_DUE_JOBS = (
    select(BacktestJob.id)
    .where(BacktestJob.status.in_(_UNFINISHED), BacktestJob.due_at <= bindparam("now"))
    .order_by(BacktestJob.due_at)
    .limit(bindparam("limit"))
)
_DUE_LEADS = (
    select(Lead.id)
    .where(or_(Lead.decay_due_at <= bindparam("now"), Lead.inactive_due_at <= bindparam("now")))
    .limit(bindparam("limit"))
)


def claim_due_enrolments(
    session: Session, now: datetime, limit: int, lease: timedelta = DEFAULT_LEASE
) -> list[int]:
    """Claim up to `limit` due enrolments: rows locked with SKIP LOCKED, leased, ids returned.

    Several schedulers can run this at once on PostgreSQL; each row goes to one of them.
    A message lost after the claim (broker flushed, worker killed) makes the row due again
    once the lease runs out.
    """
    params = {"now": now, "limit": limit, "lease": now + lease}
    return claim(session, _DUE_ENROLMENTS, params, Enrolment, "lease_until")


def claim_due_deliveries(
    session: Session, now: datetime, limit: int, lease: timedelta = DEFAULT_LEASE
) -> list[str]:
    """Claim planned deliveries that are due, like enrolments: SKIP LOCKED, leased, by index."""
    params = {"now": now, "limit": limit, "lease": now + lease}
    return claim(session, _DUE_DELIVERIES, params, Delivery, "lease_until")


def claim_failed_events(
    session: Session, now: datetime, limit: int, lease: timedelta = DEFAULT_LEASE
) -> list[int]:
    """Claim failed events whose retry is due, oldest first; the lease is `retry_at` moved on.

    A retry that fails again sets its own backoff; one that is lost comes back after the lease.
    """
    params = {"now": now, "limit": limit, "lease": now + lease}
    return claim(session, _FAILED_EVENTS, params, Event, "retry_at")


def claim_due_leads(session: Session, now: datetime, limit: int) -> list[int]:
    """Leads whose decay or inactivity fell due, by index; locked but not leased, since a
    refresh that runs twice finds nothing due the second time."""
    return claim(session, _DUE_LEADS, {"now": now, "limit": limit})


def claim_due_jobs(
    session: Session, now: datetime, limit: int, lease: timedelta = DEFAULT_LEASE
) -> list[str]:
    """Claim backtest jobs whose message was lost or whose worker died, like enrolments;
    a job that ran `MAX_JOB_ATTEMPTS` times already is failed instead."""
    params = {"now": now, "limit": limit, "lease": now + lease}
    claimed = claim(session, _DUE_JOBS, params, BacktestJob, "due_at")
    again = []
    for job in session.scalars(select(BacktestJob).where(BacktestJob.id.in_(claimed))):
        if job.attempts < MAX_JOB_ATTEMPTS:
            again.append(job.id)
            continue
        job.status, job.due_at = JobStatus.FAILED, None
        job.error = f"gave up after {job.attempts} attempts (its worker stopped each time)"
    return again


_LEADS_OF = select(Enrolment.id, Enrolment.lead_id).where(
    Enrolment.id.in_(bindparam("ids", expanding=True))
)


def advance_enrolment(session: Session, rt: Runtime, enrolment_id: int) -> list[str]:
    """Advance one claimed enrolment: a batch of one (`advance_enrolments`)."""
    return advance_enrolments(session, rt, [enrolment_id])


def advance_enrolments(session: Session, rt: Runtime, enrolment_ids: list[int]) -> list[str]:
    """Advance claimed enrolments together under their row locks; the ids of sends due now.

    The leads' rows are locked first, in id order, then the enrolments: the order event
    processing takes them (lead, then its enrolments), so the two never wait on each other in
    a circle. What the steps read (planned sends, the leads' events) is read once for all.
    """
    lead_of = dict(session.execute(_LEADS_OF, {"ids": enrolment_ids}).all())
    leads = lock_leads(session, lead_of.values())
    enrolments = lock_enrolments(session, lead_of)
    for enrolment_id, enrolment in list(enrolments.items()):
        if enrolment.lead_id not in leads:  # a merge gave it to another lead meanwhile:
            enrolment.lease_until = None  # the next pass claims it under that lead's lock
            del enrolments[enrolment_id]
    memo = Memo.load(session, leads, (), rt.clock.now(), advancing=enrolments, lazy=True)
    planned: list[Delivery] = []
    with remembering(session, memo):
        for enrolment_id in sorted(enrolments, key=lambda e: (lead_of[e], e)):
            enrolment = enrolments[enrolment_id]
            planned.extend(advance(session, rt, enrolment, leads[enrolment.lead_id]))
    now = rt.clock.now()  # after planning: a send planned for "now" on a real clock is due
    return [d.id for d in planned if d.due_at <= now]
