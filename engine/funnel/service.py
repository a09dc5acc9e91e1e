"""The funnel's one entry point: record events, upsert leads, sales actions, apply the clock.

The CLI, the HTTP API and the workers call only these, and each returns an `Outcome` that says
what changed and what follow-up work is due, so no caller re-derives it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from engine.clock import as_utc
from engine.db import is_postgres
from engine.errors import InvalidLeadError
from engine.funnel.journey import enrol_on, on_lead_changed
from engine.funnel.lead_fields import check_attributes, storable, storable_json
from engine.funnel.leads import Identity, apply_attributes, ensure_lead, lock_lead
from engine.funnel.lifecycle import StageOutcome, evaluate_stage, mark_customer, recycle, set_stage
from engine.funnel.scoring import apply_decay, recompute_fit, record_activity, score_event
from engine.funnel.topics import TOPIC_EVENT, leave_topic, topic_of
from engine.models import Enrolment, Event, EventStatus, Handoff, Lead, Stage
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Fired

log = logging.getLogger(__name__)

# A failed event is retried after 1 minute, then 2, 4, ... and at least every 6 hours.
FIRST_RETRY = timedelta(minutes=1)
LAST_RETRY = timedelta(hours=6)
ERROR_CHARS = 500  # the stored error is one line of at most this many characters

# Events that change consent the moment they are recorded.
CONSENT_EVENTS: dict[str, tuple[str, bool]] = {
    "unsubscribed": ("email_consent", False),
    "sms_opted_out": ("sms_consent", False),
    "sms_opted_in": ("sms_consent", True),
}


@dataclass
class Outcome:
    """What one service call changed, and the follow-up work it made due.

    `lead` is for use inside the caller's transaction; the plain fields outlive it.
    """

    lead: Lead
    lead_id: int
    stage: Stage
    event_id: int | None = None
    duplicate: bool = False
    points: float = 0.0
    handoff_id: int | None = None  # a handoff this call created: deliver it
    due_enrolments: list[int] = field(default_factory=list)  # enrolments due now: advance them
    failed: str | None = None  # the event is stored but processing failed: the scheduler retries

    @classmethod
    def of(
        cls,
        lead: Lead,
        now: datetime,
        running: Iterable[Enrolment] = (),
        handoff: Handoff | None = None,
        **changed: Any,
    ) -> Outcome:
        """The outcome for `lead`, with the running enrolments that are due at `now`."""
        due = [e.id for e in running if e.next_run_at is not None and e.next_run_at <= now]
        handoff_id = handoff.id if handoff is not None else None
        return cls(lead, lead.id, lead.stage, handoff_id=handoff_id, due_enrolments=due, **changed)

    def summary(self) -> dict[str, Any]:
        """The plain fields, for JSON output: everything but the lead row."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lead"}


def track(
    session: Session,
    rt: Runtime,
    lead: Mapping[str, Any],
    event_type: str,
    properties: Mapping[str, Any] | None = None,
    *,
    occurred_at: datetime | None = None,
    event_id: str | None = None,
    source: str = "api",
) -> Outcome:
    """Record an event for a lead (created when unknown), score it and run its consequences.

    Idempotent by `event_id`: the same id twice counts once, also from two processes at once.
    Storing the event never depends on its consequences: when they fail, the event stays
    stored, marked failed for the scheduler to retry, and the outcome says so (`failed`).
    """
    if (
        not isinstance(event_type, str)
        or not event_type.replace("_", "").isalnum()
        or not event_type.isascii()
        or len(event_type) > 64
    ):
        raise InvalidLeadError(f"invalid event type {event_type!r}: up to 64 letters, digits and _")
    if event_id is not None:
        storable(event_id, "event id", 200)
    properties = storable_json(dict(properties or {}), "properties")
    left_topic = topic_of(properties) if event_type == TOPIC_EVENT else None
    now = rt.clock.now()
    identity = Identity.parse(lead)
    attributes = check_attributes(lead)
    stage = Stage.LEAD if event_type in rt.workflows.scoring.lead_events else Stage.SUBSCRIBER
    row, created = ensure_lead(session, identity, now, stage)
    attributes_changed = apply_attributes(row, identity, attributes) or created
    event = _insert_event(
        session,
        row,
        event_type,
        dict(properties or {}),
        as_utc(occurred_at or now),
        now,
        event_id,
        source,
    )
    if event is None:
        original = session.scalars(select(Event).where(Event.idempotency_key == event_id)).one()
        return Outcome.of(row, now, duplicate=True, event_id=original.id, failed=_failure(original))
    if event_type in CONSENT_EVENTS:
        # with the event, not its consequences: an opt-out is honoured even when those fail,
        # and a retry never replays it over a later opt-in
        column, value = CONSENT_EVENTS[event_type]
        setattr(row, column, value)
    if left_topic is not None:  # the same for leaving one email topic
        leave_topic(session, row, left_topic, source, now)
    return _process(session, rt, row, event, fit=attributes_changed)


def reprocess(session: Session, rt: Runtime, event_id: int) -> Outcome | None:
    """Retry the consequences of a stored event that failed, under its lead's row lock.

    An event processed meanwhile (a second scheduler, a lease that ran out) is left alone and
    answered as a duplicate; None when the event no longer exists.
    """
    lead_id = session.scalar(select(Event.lead_id).where(Event.id == event_id))
    if lead_id is None:
        return None
    lead = lock_lead(session, lead_id)
    # read again under the lock: whoever held it may have processed the event
    event = session.scalars(
        select(Event).where(Event.id == event_id).execution_options(populate_existing=True)
    ).one()
    if event.status == EventStatus.PROCESSED:
        return Outcome.of(lead, rt.clock.now(), duplicate=True, event_id=event.id)
    return _process(session, rt, lead, event, fit=True)


def backoff(attempts: int) -> timedelta:
    """How long a failed event waits for its next try: doubling from a minute, capped at 6 h."""
    return min(FIRST_RETRY * (1 << min(max(attempts - 1, 0), 16)), LAST_RETRY)


def _process(session: Session, rt: Runtime, lead: Lead, event: Event, *, fit: bool) -> Outcome:
    """Run an event's consequences in a savepoint, so a failure undoes only them, not the event."""
    session.flush()  # storing the event and the lead fails here, before the savepoint
    try:
        with session.begin_nested():
            outcome = _consequences(session, rt, lead, event, fit=fit)
    except Exception as error:
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            raise  # the connection, and the transaction that stored the event, are gone
        # the rollback expired what the savepoint changed: lead and event reload from the row
        event.status = EventStatus.FAILED
        event.attempts += 1
        event.error = _one_line(error)
        event.retry_at = rt.clock.now() + backoff(event.attempts)
        log.error(
            "event %s (%s) of lead %s: processing failed (attempt %s), retry at %s",
            event.id,
            event.type,
            lead.id,
            event.attempts,
            event.retry_at.isoformat(),
            exc_info=error,
        )
        return Outcome.of(lead, rt.clock.now(), event_id=event.id, failed=event.error)
    if event.status == EventStatus.FAILED:  # a retry that worked; a new event is stored processed
        event.status = EventStatus.PROCESSED
        event.error = None
        event.retry_at = None
    return outcome


def _consequences(session: Session, rt: Runtime, lead: Lead, event: Event, *, fit: bool) -> Outcome:
    """Score a stored event and run what follows: decay, fit, stages, handoff and the journey.

    The one processing path of a new event and of a retry; `fit` recomputes the fit score.
    """
    scoring = rt.workflows.scoring
    now = rt.clock.now()
    apply_decay(session, scoring, lead, now)
    if fit:
        recompute_fit(session, scoring, lead, now)
    points = sum(e.points for e in score_event(session, scoring, lead, event, now))
    record_activity(lead, scoring, event.occurred_at)
    lead.updated_at = now  # set late, so the flush writes the lead in one UPDATE
    if lead.stage == Stage.SUBSCRIBER and event.type in scoring.lead_events:
        set_stage(session, lead, Stage.LEAD, f"event {event.type}", now)
    outcome = evaluate_stage(session, rt, lead, f"event {event.type}")
    running = _react(session, rt, lead, (Fired("event", event.type), *outcome.fired))
    # enrol_on read the clock after `now`: ask it again for what is due
    return Outcome.of(
        lead, rt.clock.now(), running, outcome.handoff, event_id=event.id, points=points
    )


def _failure(event: Event) -> str | None:
    """The error of an event whose processing failed and awaits its retry, else None."""
    return event.error if event.status == EventStatus.FAILED else None


def _one_line(error: Exception) -> str:
    """The exception's type and text on one storable line, for people and the API."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    text = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return text[:ERROR_CHARS]


def _insert_event(
    session: Session,
    lead: Lead,
    event_type: str,
    properties: dict[str, Any],
    occurred_at: datetime,
    now: datetime,
    event_id: str | None,
    source: str,
) -> Event | None:
    """Insert the event unless its idempotency key is taken; None means a duplicate.

    Inserted as processed: no one sees the row before this transaction commits, and a failure
    of its consequences marks it failed first; so success costs no second UPDATE of the row.
    """
    values = dict(
        lead_id=lead.id,
        type=event_type,
        properties=properties,
        occurred_at=occurred_at,
        received_at=now,
        idempotency_key=event_id,
        source=source,
        status=EventStatus.PROCESSED,
    )
    if event_id is None:
        event = Event(**values)
        session.add(event)
        session.flush()
        return event
    insert = pg_insert if is_postgres(session) else sqlite_insert
    return session.scalars(
        insert(Event)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(Event)
    ).one_or_none()


def _react(session: Session, rt: Runtime, lead: Lead, fired: tuple[Fired, ...]) -> list[Enrolment]:
    """Apply exit rules and score triggers to running enrolments, then enrol on what fired.

    Returns every enrolment running afterwards.
    """
    running = on_lead_changed(session, rt, lead)
    for trigger in fired:
        running.extend(enrol_on(session, rt, lead, trigger))
    return running


def upsert_lead(session: Session, rt: Runtime, data: Mapping[str, Any]) -> Outcome:
    """Create or update a lead from attributes; fit is recomputed and stages follow."""
    now = rt.clock.now()
    identity = Identity.parse(data)
    stage = data.get("stage") or Stage.LEAD
    if stage not in (Stage.SUBSCRIBER, Stage.LEAD):
        raise InvalidLeadError(f"stage {stage!r} cannot be set on upsert: use subscriber or lead")
    attributes = {k: v for k, v in check_attributes(data).items() if k != "stage"}
    lead, created = ensure_lead(session, identity, now, Stage(stage))
    if apply_attributes(lead, identity, attributes) or created:
        lead.updated_at = now
        if recompute_fit(session, rt.workflows.scoring, lead, now):
            outcome = evaluate_stage(session, rt, lead, "attributes changed")
            running = _react(session, rt, lead, outcome.fired)
            return Outcome.of(lead, rt.clock.now(), running, outcome.handoff)
    return Outcome.of(lead, now)


def refresh(session: Session, rt: Runtime, lead_id: int) -> Outcome:
    """Apply the clock to a lead: decay that fell due, slipping back, inactivity."""
    lead = lock_lead(session, lead_id)
    now = rt.clock.now()
    fired: list[Fired] = []
    outcome = StageOutcome()
    if apply_decay(session, rt.workflows.scoring, lead, now):
        outcome = evaluate_stage(session, rt, lead, "score decay")
        fired.extend(outcome.fired)
    if lead.inactive_due_at is not None and lead.inactive_due_at <= now:
        lead.inactive_due_at = None  # fires once per idle spell; activity re-arms it
        fired.append(Fired("inactive"))
    running = _react(session, rt, lead, tuple(fired)) if fired else []
    return Outcome.of(lead, rt.clock.now(), running, outcome.handoff)


def recycle_lead(session: Session, rt: Runtime, lead_id: int, reason: str) -> Outcome:
    """Sales sends a lead back to nurture; re-engagement sequences may enrol it."""
    lead = lock_lead(session, lead_id)
    if lead.stage not in (Stage.SQL, Stage.MQL, Stage.CUSTOMER):
        raise InvalidLeadError(
            f"lead is {lead.stage}: only an mql, sql or customer can be recycled"
        )
    outcome = recycle(session, rt, lead, reason)
    running = _react(session, rt, lead, outcome.fired)
    return Outcome.of(lead, rt.clock.now(), running)


def win_lead(session: Session, rt: Runtime, lead_id: int, reason: str = "won by sales") -> Outcome:
    """Sales closed the lead: it becomes a customer and leaves every sequence."""
    lead = lock_lead(session, lead_id)
    mark_customer(session, rt, lead, reason)
    _react(session, rt, lead, ())
    return Outcome.of(lead, rt.clock.now())
