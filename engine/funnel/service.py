"""The funnel's one entry point: record events, upsert leads, sales actions, apply the clock.

The CLI, the HTTP API and the workers call only these, and each returns an `Outcome` that says
what changed and what follow-up work is due, so no caller re-derives it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy import insert as sa_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from engine.clock import as_utc
from engine.db import is_postgres
from engine.errors import InvalidLeadError, UnknownLeadError
from engine.funnel.journey import enrol_on, on_lead_changed
from engine.funnel.lead_fields import check_attributes, storable, storable_json
from engine.funnel.leads import (
    Identity,
    apply_attributes,
    claims,
    ensure_leads,
    lock_lead,
    lock_leads,
    lock_leads_and_visitors,
)
from engine.funnel.lifecycle import (
    StageMove,
    StageOutcome,
    evaluate_stage,
    mark_customer,
    recycle,
    set_stage,
)
from engine.funnel.memo import Memo, remembering
from engine.funnel.merge import Folded, fold
from engine.funnel.replay import Replayed, read_past, replay
from engine.funnel.scoring import apply_decay, recompute_fit, record_activity, score_event
from engine.funnel.topics import TOPIC_EVENT, leave_topic, topic_of
from engine.models import (
    Enrolment,
    Event,
    EventStatus,
    Handoff,
    Lead,
    LeadConflict,
    LedgerKind,
    ScoreEntry,
    Stage,
)
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

    `lead` is for use inside the caller's transaction; the plain fields outlive it, and so
    does `due_enrolments` once the service call returned (it flushes, giving new ones ids).
    """

    lead: Lead
    lead_id: int
    stage: Stage
    event_id: int | None = None
    duplicate: bool = False
    points: float = 0.0
    handoff_id: int | None = None  # a handoff this call created: deliver it
    failed: str | None = None  # the event is stored but processing failed: the scheduler retries
    moved: StageMove | None = None  # where the call moved the lead along the funnel
    held: bool = False  # qualifies for SQL, handoff held back (a rescore without --handoff)
    due: list[Enrolment] = field(default_factory=list, repr=False)  # due now: advance them

    @property
    def due_enrolments(self) -> list[int]:
        """The ids of the enrolments that were due when the call saw them."""
        return [enrolment.id for enrolment in self.due]

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
        due = [e for e in running if e.next_run_at is not None and e.next_run_at <= now]
        handoff_id = handoff.id if handoff is not None else None
        return cls(lead, lead.id, lead.stage, handoff_id=handoff_id, due=due, **changed)

    def summary(self) -> dict[str, Any]:
        """The plain fields, for JSON output: everything but the rows."""
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _ROWS}
        return plain | {"due_enrolments": self.due_enrolments}


_ROWS = ("lead", "due")


@dataclass(frozen=True)
class NewEvent:
    """One event to record: who did it (identity and attributes), what, and when."""

    lead: Mapping[str, Any]
    type: str
    properties: Mapping[str, Any] | None = None
    occurred_at: datetime | None = None
    event_id: str | None = None
    source: str = "api"


@dataclass
class _Checked:
    """A new event after its checks: normalised identity, storable fields."""

    identity: Identity
    attributes: dict[str, Any]
    type: str
    properties: dict[str, Any]
    occurred_at: datetime
    event_id: str | None
    source: str
    left_topic: str | None


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
    """Record one event for a lead (created when unknown): a batch of one (`record`)."""
    new = NewEvent(lead, event_type, properties, occurred_at, event_id, source)
    return record(session, rt, [new])[0]


def record(session: Session, rt: Runtime, events: Sequence[NewEvent]) -> list[Outcome]:
    """Record events for leads (created when unknown), score them and run their consequences.

    Many events are one pass: the leads are found or created and locked in id order, the
    events stored with one insert-if-absent per kind of key, and then scored in the order
    given, each seeing only what came before it, as if it came alone. The attributes a batch
    carries are applied before its events are scored.

    Idempotent by `event_id`: the same id twice counts once, within a batch, across batches
    and from two processes at once. Storing an event never depends on its consequences: when
    they fail, the event stays stored, marked failed for the scheduler to retry, and its
    outcome says so (`failed`). Returns one outcome per event, in order.
    """
    now = rt.clock.now()
    checked = [_check(event, now) for event in events]
    lead_events = rt.workflows.scoring.lead_events
    wanted = [
        (c.identity, Stage.LEAD if c.type in lead_events else Stage.SUBSCRIBER) for c in checked
    ]
    leads = ensure_leads(session, wanted, now)
    fit: dict[int, bool] = {}
    for c, (lead, created) in zip(checked, leads, strict=True):
        changed = _apply(session, lead, c.identity, c.attributes, c.source, now) or created
        fit[lead.id] = fit.get(lead.id, False) or changed
    limited = {rule.id for rule in rt.workflows.scoring.engagement if rule.limit is not None}
    # read before the batch is stored: each event then sees only those before it
    memo = Memo.load(session, fit.keys(), limited, now)
    stored = _insert_events(session, [lead for lead, _ in leads], checked, now)
    turns = [(lead, event, c) for c, (lead, _), event in zip(checked, leads, stored, strict=True)]
    with remembering(session, memo):
        outcomes = _process_all(session, rt, memo, turns, fit)
    session.flush()  # everything the batch changed, in one go: new enrolments get their ids
    return outcomes


def check_event(
    kind: str, properties: Mapping[str, Any] | None, event_id: str | None
) -> dict[str, Any]:
    """The checks of what an event holds (type, id, properties), also made where events wait
    before they are recorded, so a kept event never fails later; returns storable properties.
    InvalidLeadError names what is wrong."""
    if (
        not isinstance(kind, str)
        or not kind.replace("_", "").isalnum()
        or not kind.isascii()
        or len(kind) > 64
    ):
        raise InvalidLeadError(f"invalid event type {kind!r}: up to 64 letters, digits and _")
    if event_id is not None:
        storable(event_id, "event id", 200)
    checked: dict[str, Any] = storable_json(dict(properties or {}), "properties")
    return checked


def _check(event: NewEvent, now: datetime) -> _Checked:
    """Check one new event; InvalidLeadError names what is wrong."""
    kind = event.type
    properties = check_event(kind, event.properties, event.event_id)
    return _Checked(
        identity=Identity.parse(event.lead),
        attributes=check_attributes(event.lead),
        type=kind,
        properties=properties,
        occurred_at=as_utc(event.occurred_at or now),
        event_id=event.event_id,
        source=event.source,
        left_topic=topic_of(properties) if kind == TOPIC_EVENT else None,
    )


def _with_event(session: Session, lead: Lead, event: _Checked, now: datetime) -> None:
    """What an event changes the moment it is stored, before and whatever its consequences."""
    if event.type in CONSENT_EVENTS:
        # with the event, not its consequences: an opt-out is honoured even when those fail,
        # and a retry never replays it over a later opt-in
        column, value = CONSENT_EVENTS[event.type]
        setattr(lead, column, value)
    if event.left_topic is not None:  # the same for leaving one email topic
        leave_topic(session, lead, event.left_topic, event.source, now)


def reprocess(session: Session, rt: Runtime, event_id: int) -> Outcome | None:
    """Retry the consequences of a stored event that failed, under its lead's row lock.

    An event processed meanwhile (a second scheduler, a lease that ran out) is left alone and
    answered as a duplicate; None when the event no longer exists.
    """
    lead: Lead | None = None
    while lead is None:  # a merge may move the event to another lead while this waits
        lead_id = session.scalar(select(Event.lead_id).where(Event.id == event_id))
        if lead_id is None:
            return None
        lead = lock_leads(session, [lead_id]).get(lead_id)
    # read again under the lock: whoever held it may have processed the event
    event = session.scalars(
        select(Event).where(Event.id == event_id).execution_options(populate_existing=True)
    ).one()
    if event.status == EventStatus.PROCESSED:
        return Outcome.of(lead, rt.clock.now(), duplicate=True, event_id=event.id)
    return _process(session, rt, None, lead, event, {lead.id: True})


def backoff(attempts: int) -> timedelta:
    """How long a failed event waits for its next try: doubling from a minute, capped at 6 h."""
    return min(FIRST_RETRY * (1 << min(max(attempts - 1, 0), 16)), LAST_RETRY)


_Turn = tuple[Lead, "Event | tuple[int, str | None]", _Checked]


def _process_all(
    session: Session, rt: Runtime, memo: Memo, turns: list[_Turn], fit: dict[int, bool]
) -> list[Outcome]:
    """Run the consequences of stored events in order in one savepoint; when that fails, run
    them again one savepoint each, so a failure undoes only its own event's consequences.

    What an event changes the moment it is stored (consent, topics) is applied at its turn,
    and again outside the per-event savepoints when they run: a failure never undoes an
    opt-out. A duplicate is answered at its turn, with the lead as the events before it left it.
    """
    session.flush()  # storing the events and the leads fails here, before any savepoint
    before, again = memo.copy(), dict(fit)
    if sum(isinstance(event, Event) for _, event, _ in turns) > 1:
        try:
            with session.begin_nested():
                return [_turn(session, rt, memo, turn, fit, alone=False) for turn in turns]
        except Exception as error:
            if isinstance(error, DBAPIError) and error.connection_invalidated:
                raise
            memo.restore(before)
            fit.clear()
            fit.update(again)
    return [_turn(session, rt, memo, turn, fit, alone=True) for turn in turns]


def _turn(
    session: Session, rt: Runtime, memo: Memo, turn: _Turn, fit: dict[int, bool], *, alone: bool
) -> Outcome:
    """One event's turn in a batch: its immediate changes, then its consequences (in their
    own savepoint when `alone`); a duplicate answers with the original's id and error."""
    lead, event, checked = turn
    now = rt.clock.now()
    if not isinstance(event, Event):
        original_id, failed = event
        return Outcome.of(lead, now, duplicate=True, event_id=original_id, failed=failed)
    _with_event(session, lead, checked, now)
    if alone:
        return _process(session, rt, memo, lead, event, fit)
    return _consequences(session, rt, memo, lead, event, fit)


def _process(
    session: Session, rt: Runtime, memo: Memo | None, lead: Lead, event: Event, fit: dict[int, bool]
) -> Outcome:
    """Run an event's consequences in a savepoint, so a failure undoes only them, not the event."""
    session.flush()
    before = memo.copy() if memo is not None else None
    try:
        with session.begin_nested():
            outcome = _consequences(session, rt, memo, lead, event, fit)
    except Exception as error:
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            raise  # the connection, and the transaction that stored the event, are gone
        if memo is not None and before is not None:
            memo.restore(before)
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


def _consequences(
    session: Session,
    rt: Runtime,
    memo: Memo | None,
    lead: Lead,
    event: Event,
    fit: dict[int, bool],
) -> Outcome:
    """Score a stored event and run what follows: decay, fit, stages, handoff and the journey.

    The one processing path of a new event and of a retry. The fit score is recomputed for
    the first event of a lead whose attributes changed (`fit`, emptied as it goes). Nothing
    is flushed on the way (no autoflush): the ledger rows and lead updates of a whole batch
    go to the database together; what reads the database meanwhile flushes what it needs.
    """
    scoring = rt.workflows.scoring
    now = rt.clock.now()
    if memo is not None:
        memo.saw(lead.id, event.type, event.occurred_at)
    with session.no_autoflush:
        apply_decay(session, scoring, lead, now)
        if fit.pop(lead.id, False):
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


def _one_line(error: Exception) -> str:
    """The exception's type and text on one storable line, for people and the API."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    text = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return text[:ERROR_CHARS]


def _insert_events(
    session: Session, leads: Sequence[Lead], events: Sequence[_Checked], now: datetime
) -> list[Event | tuple[int, str | None]]:
    """Store the events unless their idempotency key is taken: one insert-if-absent for those
    with a key, one insert for those without. Per event in order: the stored Event, or for a
    duplicate (taken key, or a key repeated in the batch) the original's id and error.

    Inserted as processed: no one sees the rows before this transaction commits, and a failure
    of their consequences marks them failed first; so success costs no second UPDATE.
    """
    rows = [
        dict(
            lead_id=lead.id,
            type=event.type,
            properties=event.properties,
            occurred_at=event.occurred_at,
            received_at=now,
            idempotency_key=event.event_id,
            source=event.source,
            status=EventStatus.PROCESSED,
        )
        for lead, event in zip(leads, events, strict=True)
    ]
    first: dict[str, int] = {}  # a key's first event in the batch; later ones are duplicates
    keyed, plain = [], []
    for index, event in enumerate(events):
        if event.event_id is None:
            plain.append(index)
        elif first.setdefault(event.event_id, index) == index:
            keyed.append(index)
    by_key: dict[str, Event] = {}
    if keyed:
        insert = pg_insert if is_postgres(session) else sqlite_insert
        if_absent = insert(Event).on_conflict_do_nothing(index_elements=["idempotency_key"])
        inserted = session.scalars(if_absent.returning(Event), [rows[i] for i in keyed])
        by_key = {str(row.idempotency_key): row for row in inserted}
    result: list[Event | tuple[int, str | None]] = [(0, None)] * len(events)
    if plain:
        statement = sa_insert(Event).returning(Event, sort_by_parameter_order=True)
        created = session.scalars(statement, [rows[i] for i in plain]).all()
        for index, row in zip(plain, created, strict=True):
            result[index] = row
    taken = sorted({key for key in first if key not in by_key})
    originals = {
        key: (event_id, _failure_of(status, error))
        for key, event_id, status, error in (
            session.execute(_BY_KEYS, {"keys": taken}) if taken else ()
        )
    }
    for index in keyed:
        key = str(events[index].event_id)
        result[index] = by_key[key] if key in by_key else originals[key]
    for index, event in enumerate(events):
        if event.event_id is not None and first[event.event_id] != index:
            original = result[first[event.event_id]]
            result[index] = (original.id, None) if isinstance(original, Event) else original
    return result


_BY_KEYS = select(Event.idempotency_key, Event.id, Event.status, Event.error).where(
    Event.idempotency_key.in_(bindparam("keys", expanding=True))
)


def _failure_of(status: EventStatus, error: str | None) -> str | None:
    """The error of an event whose processing failed and awaits its retry, else None."""
    return error if status == EventStatus.FAILED else None


def _react(session: Session, rt: Runtime, lead: Lead, fired: tuple[Fired, ...]) -> list[Enrolment]:
    """Apply exit rules and score triggers to running enrolments, then enrol on what fired.

    Returns every enrolment running afterwards.
    """
    running = on_lead_changed(session, rt, lead)
    for trigger in fired:
        running.extend(enrol_on(session, rt, lead, trigger))
    return running


def upsert_lead(
    session: Session, rt: Runtime, data: Mapping[str, Any], source: str = "api"
) -> Outcome:
    """Create or update a lead from attributes: a batch of one (`upsert_leads`)."""
    return upsert_leads(session, rt, [data], source)[0]


def upsert_leads(
    session: Session, rt: Runtime, rows: Sequence[Mapping[str, Any]], source: str = "api"
) -> list[Outcome]:
    """Create or update leads from attributes; fit is recomputed and stages follow; `source`
    (api, import, form, ...) is what a conflict of identities is listed as seen through.

    All rows are checked first (InvalidLeadError names the first bad one), then the leads are
    found or created together (`ensure_leads`), then each row applied in order.
    """
    now = rt.clock.now()
    checked = [_check_upsert(data) for data in rows]
    leads = ensure_leads(session, [(identity, stage) for identity, stage, _ in checked], now)
    outcomes = []
    for (identity, _, attributes), (lead, created) in zip(checked, leads, strict=True):
        if _apply(session, lead, identity, attributes, source, now) or created:
            lead.updated_at = now
            if recompute_fit(session, rt.workflows.scoring, lead, now):
                outcome = evaluate_stage(session, rt, lead, "attributes changed")
                running = _react(session, rt, lead, outcome.fired)
                outcomes.append(Outcome.of(lead, rt.clock.now(), running, outcome.handoff))
                continue
        outcomes.append(Outcome.of(lead, now))
    session.flush()  # new enrolments get their ids
    return outcomes


def _apply(
    session: Session,
    lead: Lead,
    identity: Identity,
    attributes: Mapping[str, Any],
    source: str,
    now: datetime,
) -> bool:
    """Copy a call's identity and attributes onto its lead (`apply_attributes`); an identity
    another lead holds stays with that lead, and the pair is listed as a conflict (merged by
    the scheduler under `merge: auto`, by a person under `ask`). True when fit may change."""
    taken = claims(lead, identity)
    for name, value, owner in taken:
        if owner != lead.id:  # else an alias of its own: it names this lead already
            _note_conflict(session, lead.id, owner, name, value, source, now)
    return apply_attributes(lead, identity, attributes, {name for name, _, _ in taken})


def _note_conflict(
    session: Session, lead_id: int, other_id: int, name: str, value: str, source: str, now: datetime
) -> None:
    """List (or count again) a call that gave `lead_id` an identity of `other_id`."""
    row = session.scalars(
        select(LeadConflict).where(
            LeadConflict.lead_id == lead_id,
            LeadConflict.other_id == other_id,
            LeadConflict.field == name,
        )
    ).one_or_none()
    if row is None:
        session.add(
            LeadConflict(
                lead_id=lead_id,
                other_id=other_id,
                field=name,
                value=value,
                source=source,
                first_seen_at=now,
                last_seen_at=now,
                times=1,
            )
        )
    else:
        row.last_seen_at, row.times, row.source = now, row.times + 1, source


def merge_leads(session: Session, rt: Runtime, keep: int, other: int) -> tuple[Folded, Outcome]:
    """Merge lead `other` into lead `keep` (`merge.fold`), then rescore the survivor over the
    joined past: the ledger sums to the score, and a crossing of SQL hands off once."""
    locked = lock_leads_and_visitors(session, [keep, other])
    for lead_id in (keep, other):
        if lead_id not in locked:
            raise UnknownLeadError(f"no lead with id {lead_id}")
    folded = fold(session, rt, locked[keep], locked[other])
    cause = f"merged with {folded.merged_key}"
    # reacting even when the score stays: a stage taken from the other (sql) ends its runs
    outcome = rescore_leads(session, rt, [keep], cause=cause, handoff=True, react=True)[0]
    return folded, outcome


def _check_upsert(data: Mapping[str, Any]) -> tuple[Identity, Stage, dict[str, Any]]:
    """The identity, the stage of a new lead and the attributes of an upsert row."""
    identity = Identity.parse(data)
    stage = data.get("stage") or Stage.LEAD
    if stage not in (Stage.SUBSCRIBER, Stage.LEAD):
        raise InvalidLeadError(f"stage {stage!r} cannot be set on upsert: use subscriber or lead")
    attributes = {k: v for k, v in check_attributes(data).items() if k != "stage"}
    return identity, Stage(stage), attributes


def refresh_leads(session: Session, rt: Runtime, lead_ids: list[int]) -> list[Outcome]:
    """Apply the clock to leads: decay that fell due, slipping back, inactivity.

    The leads are locked in id order in one statement, what conditions read of them is read
    once (a `Memo`), and nothing is flushed until the end, as for a batch of events.
    """
    leads = lock_leads(session, lead_ids)
    memo = Memo.load(session, leads, (), rt.clock.now(), lazy=True)
    with remembering(session, memo), session.no_autoflush:
        outcomes = [_refresh(session, rt, leads[lead_id]) for lead_id in sorted(leads)]
    session.flush()  # new enrolments get their ids
    return outcomes


def _refresh(session: Session, rt: Runtime, lead: Lead) -> Outcome:
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
    lead = _living(lock_lead(session, lead_id))
    if lead.stage not in (Stage.SQL, Stage.MQL, Stage.CUSTOMER):
        raise InvalidLeadError(
            f"lead is {lead.stage}: only an mql, sql or customer can be recycled"
        )
    outcome = recycle(session, rt, lead, reason)
    running = _react(session, rt, lead, outcome.fired)
    session.flush()  # new enrolments get their ids
    return Outcome.of(lead, rt.clock.now(), running)


def win_lead(session: Session, rt: Runtime, lead_id: int, reason: str = "won by sales") -> Outcome:
    """Sales closed the lead: it becomes a customer and leaves every sequence."""
    lead = _living(lock_lead(session, lead_id))
    mark_customer(session, rt, lead, reason)
    _react(session, rt, lead, ())
    return Outcome.of(lead, rt.clock.now())


def _living(lead: Lead) -> Lead:
    """The lead, unless it was erased: sales actions on a tombstone would act on nobody."""
    if lead.erased_at is not None:
        raise InvalidLeadError(f"lead {lead.id} was erased on {lead.erased_at:%Y-%m-%d}")
    return lead


def rescore_leads(
    session: Session,
    rt: Runtime,
    lead_ids: list[int],
    *,
    cause: str,
    handoff: bool,
    react: bool = False,
) -> list[Outcome]:
    """Bring leads' ledgers in line with the scoring rules on disk (`replay`), then their stages.

    Per lead and changed rule one ledger row of kind `rescore` saying `cause` (a rescore's
    `old -> new` versions, a merge), so the ledger still sums to the score. A lead that now
    qualifies for SQL is handed off only with `handoff`; otherwise it is `held` and moves as
    far as MQL. With `react`, exit rules and triggers run even when nothing changed (a merge
    may have moved the stage). Under the leads' row locks, in id order; a second run finds
    nothing to change.
    """
    leads = lock_leads(session, lead_ids)
    now = rt.clock.now()
    pasts = read_past(session, leads)
    memo = Memo.load(session, leads, (), now, lazy=True)
    outcomes = []
    with remembering(session, memo), session.no_autoflush:
        for lead_id in sorted(leads):
            lead = leads[lead_id]
            replayed = replay(rt.workflows.scoring, lead, pasts[lead_id], now)
            points = _rescore(session, rt, lead, replayed, cause, now)
            outcome = evaluate_stage(session, rt, lead, cause, handoff=handoff)
            changed = react or points != 0 or outcome.fired
            running = _react(session, rt, lead, outcome.fired) if changed else []
            outcomes.append(
                Outcome.of(
                    lead,
                    rt.clock.now(),
                    running,
                    outcome.handoff,
                    points=points,
                    moved=outcome.move,
                    held=outcome.held,
                )
            )
    session.flush()  # new enrolments get their ids
    return outcomes


def _rescore(
    session: Session, rt: Runtime, lead: Lead, replayed: Replayed, cause: str, now: datetime
) -> float:
    """Write the rescore rows and the replayed score onto the lead; the points it changed.

    The next decay step is the replay's in any case: a changed `decay` in scoring.yml moves
    it (or ends it) even for a lead whose points stay the same.
    """
    lead.decay_due_at = replayed.decay_due_at
    if not replayed.changes:
        return 0.0
    reasons = {rule.id: rule.reason for rule in rt.workflows.scoring.engagement}
    reasons |= {rule.id: rule.reason for rule in rt.workflows.scoring.fit}
    session.add_all(
        ScoreEntry(
            lead_id=lead.id,
            kind=LedgerKind.RESCORE,
            rule=rule,
            points=points,
            reason=f"{cause}: {reasons.get(rule, _OTHER_REASONS.get(rule, rule))}",
            occurred_at=now,
            recorded_at=now,
        )
        for rule, points in replayed.changes.items()
    )
    before = lead.score
    lead.fit, lead.engagement = replayed.fit, replayed.engagement
    lead.fit_rules = replayed.fit_rules
    lead.updated_at = now
    return lead.score - before


_OTHER_REASONS = {"decay": "score decay", "reset": "recycled by sales"}
