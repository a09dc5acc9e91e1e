"""Anonymous visitors and identity stitching: what a browser or device did before it named a
lead waits unscored, then joins the lead once, in time order, the moment it is identified.

The tracking snippet, hosted forms and Segment-spec calls all come through `take`, one `Hit`
per call: an event of a visitor (kept in `visitor_events`, or recorded on its lead once it has
one), something a lead did (recorded as any event), or a call naming both, which identifies
the visitor. Everything that reaches a lead goes through `service.record`, so consent, topics,
the journey, follow-ups and the event-survival rule hold as for any event. Decisions:

- Identifying records the visitor's stored events on the lead through `record` in time order
  (with the call's own event among them), each with a stable id: its own idempotency id, or
  `visit:<random id>` given when it was kept; they are removed in the same transaction. A
  second identify, a replayed call or two processes at once count each event once.
  Engagement limits look both ways in time (`scoring._over_limit`), so late events score as
  if they had come on time, within caps.
- A visitor linked to lead A and then identified as lead B (a shared computer, a sign-out
  and sign-in) keeps A's past on A and follows B from then on: it is linked to the lead it
  named last. Nothing moves between leads: each event is a fact about who was named then.
- `join` (a Segment `alias` of two anonymous ids) links both to the lead either one has, or,
  when neither has one, moves the previous id's stored events to the current id.
- Visitor rows are claimed (inserted if absent) and row-locked on PostgreSQL in id order, so
  an event and an identify of one visitor never interleave: a linked visitor has no stored
  events.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy import insert as sa_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from engine.clock import as_utc
from engine.db import is_postgres
from engine.errors import InvalidLeadError
from engine.funnel.lead_fields import lookup_value, storable
from engine.funnel.leads import Identity
from engine.funnel.service import NewEvent, Outcome, check_event, record, upsert_leads
from engine.models import IDENTITY_FIELDS, Lead, Visitor, VisitorEvent
from engine.workflow.runtime import Runtime

VISITOR_MAX = 200  # the length of visitors.id
# events.source of what reaches a lead from the website: the tracking snippet and its forms
SNIPPET = "snippet"
FORM = "form"


@dataclass(frozen=True)
class Hit:
    """One call from a site or a pipeline: who (an anonymous visitor, a lead, or both) and
    what they did (`type`), or nothing but who they are (`type` None: an identify)."""

    visitor: str | None
    lead: Mapping[str, Any] | None
    type: str | None = None
    properties: Mapping[str, Any] | None = None
    occurred_at: datetime | None = None
    event_id: str | None = None
    source: str = "api"

    def on(self, lead: Mapping[str, Any]) -> NewEvent:
        """This hit's event, done by `lead`."""
        assert self.type is not None
        return NewEvent(
            lead, self.type, self.properties, self.occurred_at, self.event_id, self.source
        )


@dataclass
class Taken:
    """What one hit did: recorded on a lead (`outcome`), kept for an anonymous visitor
    (`stored`, or `duplicate` when its id was kept before), and what identifying it recorded
    of the visitor's past (`stitched`, oldest first); `relinked_from` names the lead a visitor
    followed until this hit named another."""

    outcome: Outcome | None = None
    stored: bool = False
    duplicate: bool = False
    stitched: list[Outcome] = field(default_factory=list)
    relinked_from: int | None = None

    @property
    def outcomes(self) -> list[Outcome]:
        """Every outcome of the hit, for the follow-up work they made due."""
        return [*self.stitched, *([self.outcome] if self.outcome is not None else [])]


def take(session: Session, rt: Runtime, hits: Sequence[Hit]) -> list[Taken]:
    """Record hits in order: anonymous events stored, events on leads recorded, visitors that
    name a lead identified. Consecutive events on leads are one `record` pass and consecutive
    anonymous ones one insert; InvalidLeadError names the first bad hit before anything is
    written. Returns one `Taken` per hit, in order."""
    now = rt.clock.now()
    for hit in hits:
        _check(hit)
    visitors = _claim(session, {hit.visitor for hit in hits if hit.visitor}, now)
    linked = _leads(session, {v.lead_id for v in visitors.values() if v.lead_id is not None})
    taken: list[Taken] = [Taken() for _ in hits]
    # Events on leads for one `record` pass, each with the hit it answers and whether it is a
    # visitor's stitched past (True) or the hit's own event; visitors identified in the pass.
    run: list[tuple[int, bool, NewEvent]] = []
    joining: dict[str, _Joining] = {}
    stash: list[tuple[int, Hit]] = []  # anonymous events, for one insert

    def store() -> None:
        if stash:
            kept = _store(session, [hit for _, hit in stash], now)
            for (index, _), new in zip(stash, kept, strict=True):
                taken[index].stored, taken[index].duplicate = new, not new
            stash.clear()

    def flush() -> None:
        if run:
            outcomes = record(session, rt, [event for _, _, event in run])
            for (index, past, _), outcome in zip(run, outcomes, strict=True):
                if past:
                    taken[index].stitched.append(outcome)
                else:
                    taken[index].outcome = outcome
            run.clear()
        for visitor_id, joined in joining.items():
            taken[joined.index].relinked_from = _link(
                session, visitors[visitor_id], joined.rows, taken[joined.index], now
            )
            identified = taken[joined.index].outcome
            assert identified is not None
            linked[identified.lead_id] = identified.lead
        joining.clear()
        store()

    for index, hit in enumerate(hits):
        visitor = visitors[hit.visitor] if hit.visitor else None
        lead = linked.get(visitor.lead_id) if visitor and visitor.lead_id is not None else None
        current = _current(visitor, lead, joining)
        if hit.lead is None:  # an anonymous call: to the visitor's lead, if it has one
            if hit.type is None:
                continue
            if current is None:
                stash.append((index, hit))
            else:
                run.append((index, False, hit.on(current)))
        elif visitor is None or _same(current, hit.lead):  # nothing to stitch
            if hit.type is not None:
                run.append((index, False, hit.on(hit.lead)))
            else:
                flush()
                taken[index].outcome = upsert_leads(session, rt, [hit.lead], hit.source)[0]
        elif hit.type is not None and visitor.id not in joining:
            # Identified by an event (a form fill): its past joins this pass, in time order.
            store()  # the visitor's anonymous events of this batch are kept first
            rows, events = _stitching(session, visitor, hit, now)
            run.extend((index, past, event) for past, event in events)
            joining[visitor.id] = _Joining(index, hit.lead, rows)
        else:
            flush()  # the visitor's events so far are stored, the events before it recorded
            taken[index] = _identify(session, rt, visitor, hit, now)
            outcome = taken[index].outcome
            assert outcome is not None
            linked[outcome.lead_id] = outcome.lead
    flush()
    return taken


def join(session: Session, rt: Runtime, previous: str, current: str) -> list[Taken]:
    """Two anonymous ids of one person (an alias): link both to the lead either is linked to
    (the current id's first), or, when neither is, move the previous id's stored events to
    the current id. Returns what identifying a visitor recorded, one `Taken` per visitor."""
    now = rt.clock.now()
    for visitor_id in (previous, current):
        _check(Hit(visitor_id, None))
    visitors = _claim(session, {previous, current}, now)
    old, new = visitors[previous], visitors[current]
    lead_id = new.lead_id if new.lead_id is not None else old.lead_id
    if lead_id is None:
        session.execute(
            update(VisitorEvent)
            .where(VisitorEvent.visitor_id == old.id)
            .values(visitor_id=new.id)
            .execution_options(synchronize_session=False)
        )
        return []
    lead = session.get_one(Lead, lead_id)
    return [
        _identify(session, rt, visitor, Hit(visitor.id, named(lead)), now)
        for visitor in (old, new)
        if visitor.lead_id != lead_id
    ]


def _check(hit: Hit) -> None:
    """A hit names a visitor or a lead; an anonymous event is checked as `record` checks one,
    so a stored event never fails when it is recorded later."""
    if hit.visitor is not None:
        storable(hit.visitor, "anonymous id", VISITOR_MAX)
        if not hit.visitor.strip():
            raise InvalidLeadError("must not be blank", "anonymous id")
    elif hit.lead is None:
        raise InvalidLeadError("a call needs an anonymous id or a lead")
    if hit.lead is None and hit.type is not None:
        check_event(hit.type, hit.properties, hit.event_id)


def _claim(session: Session, ids: Collection[str], now: datetime) -> dict[str, Visitor]:
    """The visitors of these ids, created when new, seen now, row-locked in id order."""
    if not ids:
        return {}
    ordered = sorted(ids)
    insert = pg_insert if is_postgres(session) else sqlite_insert
    session.execute(
        insert(Visitor).on_conflict_do_nothing(index_elements=["id"]),
        [{"id": v, "first_seen_at": now, "last_seen_at": now} for v in ordered],
    )
    query = select(Visitor).where(Visitor.id.in_(ordered)).order_by(Visitor.id)
    if is_postgres(session):
        query = query.with_for_update()
    visitors = {v.id: v for v in session.scalars(query.execution_options(populate_existing=True))}
    for visitor in visitors.values():
        visitor.last_seen_at = now
    return visitors


def _leads(session: Session, ids: Collection[int]) -> dict[int, Lead]:
    """The leads visitors are linked to; `record` locks them when it records on them."""
    if not ids:
        return {}
    return {lead.id: lead for lead in session.scalars(select(Lead).where(Lead.id.in_(ids)))}


def named(lead: Lead) -> dict[str, str]:
    """The identity that names a stored lead, as `record` takes it."""
    column, value = Identity.of(lead).key()
    return {column: value}


@dataclass
class _Joining:
    """A visitor identified in the current `record` pass: by which hit (naming `lead`), and
    its kept rows, removed once the pass recorded them."""

    index: int
    lead: Mapping[str, Any]
    rows: Sequence[VisitorEvent]


def _current(
    visitor: Visitor | None, lead: Lead | None, joining: Mapping[str, _Joining]
) -> Mapping[str, Any] | None:
    """Who a visitor's calls are recorded on now: the lead a hit of this pass named, else the
    lead it is linked to, else nobody (anonymous)."""
    if visitor is not None and visitor.id in joining:
        return joining[visitor.id].lead
    if lead is None:
        return None
    return {name: getattr(lead, name) for name in IDENTITY_FIELDS if getattr(lead, name)}


def _same(current: Mapping[str, Any] | None, data: Mapping[str, Any]) -> bool:
    """True when a call names the lead the visitor is on already (by any of its identities:
    a Segment call may name it by user id only): nothing to stitch."""
    if current is None:
        return False
    column, value = Identity.parse(data).key()
    named = getattr(Identity.parse(current), column)  # a hit's own lead may be as written
    return named is not None and lookup_value(column, named) == value


def _store(session: Session, hits: Sequence[Hit], now: datetime) -> list[bool]:
    """Keep anonymous events unless their id was kept before (or earlier in `hits`): one
    insert-if-absent for those with an id, one insert for the rest. True per hit when kept."""
    rows = [
        {
            "visitor_id": hit.visitor,
            "type": hit.type,
            "properties": dict(hit.properties or {}),
            "occurred_at": as_utc(hit.occurred_at or now),
            "received_at": now,
            # A random key for an event sent without an id: never the row id, which SQLite hands
            # out again once stitched rows are deleted (the event would then count as a repeat).
            "idempotency_key": hit.event_id or f"visit:{uuid.uuid4().hex}",
            "source": hit.source,
        }
        for hit in hits
    ]
    first: dict[str, int] = {}
    for index, hit in enumerate(hits):
        if hit.event_id is not None:
            first.setdefault(hit.event_id, index)
    keyed = sorted(first.values())
    plain = [index for index, hit in enumerate(hits) if hit.event_id is None]
    inserted: set[str] = set()
    if keyed:
        insert = pg_insert if is_postgres(session) else sqlite_insert
        statement = insert(VisitorEvent).on_conflict_do_nothing(index_elements=["idempotency_key"])
        keys = session.scalars(
            statement.returning(VisitorEvent.idempotency_key), [rows[i] for i in keyed]
        )
        inserted = {str(key) for key in keys}
    if plain:
        session.execute(sa_insert(VisitorEvent), [rows[i] for i in plain])
    return [
        hit.event_id is None or (first[hit.event_id] == index and hit.event_id in inserted)
        for index, hit in enumerate(hits)
    ]


def _stitching(
    session: Session, visitor: Visitor, hit: Hit, now: datetime
) -> tuple[Sequence[VisitorEvent], list[tuple[bool, NewEvent]]]:
    """The visitor's kept rows, and the events to record on the lead the hit names: those
    rows' (True: its past) and the hit's own (False), in time order."""
    assert hit.lead is not None
    stored = session.scalars(
        select(VisitorEvent)
        .where(VisitorEvent.visitor_id == visitor.id)
        .order_by(VisitorEvent.occurred_at, VisitorEvent.id)
    ).all()
    events = [
        (
            True,
            NewEvent(
                hit.lead, row.type, row.properties, row.occurred_at, row.idempotency_key, row.source
            ),
        )
        for row in stored
    ]
    if hit.type is not None:
        events.append((False, hit.on(hit.lead)))
    events.sort(key=lambda each: as_utc(each[1].occurred_at or now))  # stable: ties keep order
    return stored, events


def _link(
    session: Session, visitor: Visitor, rows: Sequence[VisitorEvent], taken: Taken, now: datetime
) -> int | None:
    """After the pass that recorded them: the rows removed, the visitor linked to the lead its
    hit named; the lead it followed before, when that was another."""
    if rows:
        session.execute(
            delete(VisitorEvent)
            .where(VisitorEvent.id.in_([row.id for row in rows]))
            .execution_options(synchronize_session=False)
        )
        for row in rows:
            session.expunge(row)
    assert taken.outcome is not None
    lead_id, previous = taken.outcome.lead_id, visitor.lead_id
    if previous != lead_id:
        visitor.lead_id = lead_id
        visitor.identified_at = now
    return previous if previous not in (None, lead_id) else None


def _identify(session: Session, rt: Runtime, visitor: Visitor, hit: Hit, now: datetime) -> Taken:
    """Link the visitor to the lead the hit names, in a pass of its own: its stored events
    and the hit's own recorded on that lead in time order (an identify upserts it first)."""
    assert hit.lead is not None
    rows, events = _stitching(session, visitor, hit, now)
    taken = Taken()
    if hit.type is None:
        taken.outcome = upsert_leads(session, rt, [hit.lead], hit.source)[0]
    recorded = record(session, rt, [event for _, event in events]) if events else []
    for (past, _), outcome in zip(events, recorded, strict=True):
        if past:
            taken.stitched.append(outcome)
        else:
            taken.outcome = outcome
    taken.relinked_from = _link(session, visitor, rows, taken, now)
    return taken
