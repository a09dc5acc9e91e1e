"""The funnel's one entry point: record events, upsert leads, sales actions, apply the clock.

The CLI, the HTTP API and the workers call only these, and each returns an `Outcome` that says
what changed and what follow-up work is due, so no caller re-derives it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from engine.clock import as_utc
from engine.db import is_postgres
from engine.errors import InvalidLeadError
from engine.funnel.journey import enrol_on, on_lead_changed
from engine.funnel.leads import (
    Identity,
    apply_attributes,
    check_attributes,
    ensure_lead,
    lock_lead,
    storable,
    storable_json,
)
from engine.funnel.lifecycle import StageOutcome, evaluate_stage, mark_customer, recycle, set_stage
from engine.funnel.scoring import apply_decay, recompute_fit, record_activity, score_event
from engine.models import Enrolment, Event, Handoff, Lead, Stage
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Fired

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
    now = rt.clock.now()
    identity = Identity.parse(lead)
    attributes = _attributes(lead)
    scoring = rt.workflows.scoring
    stage = Stage.LEAD if event_type in scoring.lead_events else Stage.SUBSCRIBER
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
        return Outcome.of(row, now, duplicate=True)
    apply_decay(session, scoring, row, now)
    if attributes_changed:
        recompute_fit(session, scoring, row, now)
    points = sum(e.points for e in score_event(session, scoring, row, event, now))
    record_activity(row, scoring, event.occurred_at)
    row.updated_at = now  # set late, so the flush writes the lead in one UPDATE
    if event_type in CONSENT_EVENTS:
        column, value = CONSENT_EVENTS[event_type]
        setattr(row, column, value)
    if row.stage == Stage.SUBSCRIBER and event_type in scoring.lead_events:
        set_stage(session, row, Stage.LEAD, f"event {event_type}", now)
    outcome = evaluate_stage(session, rt, row, f"event {event_type}")
    running = _react(session, rt, row, (Fired("event", event_type), *outcome.fired))
    # enrol_on read the clock after `now`: ask it again for what is due
    now = rt.clock.now()
    return Outcome.of(row, now, running, outcome.handoff, event_id=event.id, points=points)


def _attributes(lead: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes of a lead mapping, checked before anything is written."""
    return check_attributes(
        {k: v for k, v in lead.items() if k not in ("email", "external_id", "phone")}
    )


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
    """Insert the event unless its idempotency key is taken; None means a duplicate."""
    values = dict(
        lead_id=lead.id,
        type=event_type,
        properties=properties,
        occurred_at=occurred_at,
        received_at=now,
        idempotency_key=event_id,
        source=source,
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
    attributes = {k: v for k, v in _attributes(data).items() if k != "stage"}
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
