"""Anonymous visitors and identity stitching on SQLite and PostgreSQL: what a visitor did before
it named a lead joins the lead once, in time order, within the scoring rules' caps."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from engine.clock import FrozenClock
from engine.errors import InvalidLeadError
from engine.funnel.visitors import Hit, Taken, join, take
from engine.models import Base, Event, Lead, ScoreEntry, Visitor, VisitorEvent
from engine.workflow.runtime import Runtime
from tests.conftest import START

ANA = {"email": "ana@northwind.test"}
BEN = {"email": "ben@contoso.test"}
PRICING = {"url": "https://acme.test/pricing"}


def _view(visitor: str, hours: float, key: str | None = None, **lead: Any) -> Hit:
    """A pricing page view `hours` after START."""
    return Hit(
        visitor,
        lead or None,
        "page_viewed",
        PRICING,
        START + timedelta(hours=hours),
        key,
        "snippet",
    )


def _take(sessions: sessionmaker[Session], rt: Runtime, *hits: Hit) -> list[Taken]:
    with sessions.begin() as s:
        return take(s, rt, hits)


def _count(sessions: sessionmaker[Session], model: Any) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _ledger(sessions: sessionmaker[Session], email: str) -> list[tuple[str, float, Any]]:
    with sessions() as s:
        lead = s.scalars(select(Lead).where(Lead.email == email)).one()
        rows = s.scalars(
            select(ScoreEntry).where(ScoreEntry.lead_id == lead.id).order_by(ScoreEntry.id)
        )
        return [(row.rule, row.points, row.occurred_at) for row in rows]


def test_anonymous_page_views_wait_unscored_and_join_the_lead_in_time_order_within_the_cap(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    clock.advance(timedelta(days=3))
    # four pricing views over two days, sent out of order; the rule scores once per day
    taken = _take(
        sessions,
        rt,
        _view("v1", 30, "p3"),
        _view("v1", 1, "p1"),
        _view("v1", 2, "p2"),
        _view("v1", 31, "p4"),
    )
    assert [t.stored for t in taken] == [True] * 4
    assert _count(sessions, Lead) == 0 and _count(sessions, VisitorEvent) == 4

    [identified] = _take(sessions, rt, Hit("v1", ANA))

    assert identified.outcome is not None and identified.outcome.lead.email == ANA["email"]
    assert len(identified.stitched) == 4
    ledger = _ledger(sessions, ANA["email"])
    # the first view of each day scores, in time order; the views within a day of one do not
    assert ledger == [
        ("pricing", 7.0, START + timedelta(hours=1)),
        ("pricing", 7.0, START + timedelta(hours=30)),
    ]
    with sessions() as s:
        events = s.scalars(select(Event).order_by(Event.id)).all()
        assert [e.idempotency_key for e in events] == ["p1", "p2", "p3", "p4"]
        assert s.get_one(Visitor, "v1").lead_id == identified.outcome.lead_id
        assert s.get_one(Visitor, "v1").identified_at == clock.now()
    assert _count(sessions, VisitorEvent) == 0


def test_identifying_twice_or_replaying_the_views_counts_each_view_once(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    _take(sessions, rt, _view("v1", 1, "p1"), _view("v1", 2))
    _take(sessions, rt, Hit("v1", ANA))
    [again] = _take(sessions, rt, Hit("v1", ANA))
    replayed = _take(sessions, rt, _view("v1", 1, "p1"))

    assert again.stitched == [] and again.relinked_from is None
    assert replayed[0].outcome is not None and replayed[0].outcome.duplicate
    assert _count(sessions, Event) == 2
    assert [rule for rule, _, _ in _ledger(sessions, ANA["email"])] == ["pricing"]


def test_a_view_replayed_before_the_identify_is_stored_once(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    first = _take(sessions, rt, _view("v1", 1, "p1"), _view("v1", 1, "p1"))
    second = _take(sessions, rt, _view("v1", 1, "p1"))

    assert [(t.stored, t.duplicate) for t in [*first, *second]] == [
        (True, False),
        (False, True),
        (False, True),
    ]
    assert _count(sessions, VisitorEvent) == 1


def test_later_events_of_an_identified_visitor_go_straight_to_its_lead(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    _take(sessions, rt, Hit("v1", ANA))
    [later] = _take(sessions, rt, _view("v1", 5))

    assert later.outcome is not None and later.outcome.points == 7
    assert _count(sessions, VisitorEvent) == 0
    assert [rule for rule, _, _ in _ledger(sessions, ANA["email"])] == ["pricing"]


def test_views_sent_without_ids_by_visitors_stitched_one_after_another_are_all_recorded(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    # SQLite reuses the row ids of deleted visitor events; no view may pass for an earlier one.
    _take(sessions, rt, _view("v1", 0))
    _take(sessions, rt, Hit("v1", ANA))
    _take(sessions, rt, _view("v2", 30))
    _take(sessions, rt, Hit("v2", BEN))

    with sessions() as s:
        owners = s.scalars(select(Event.lead_id).order_by(Event.id)).all()
        leads = {lead.email: lead.id for lead in s.scalars(select(Lead))}
    assert owners == [leads[ANA["email"]], leads[BEN["email"]]]


def test_a_form_fill_that_identifies_a_visitor_is_scored_after_the_views_before_it(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    _take(sessions, rt, _view("v1", 1), _view("v1", 2))
    form = Hit("v1", ANA, "form_submitted", {}, START + timedelta(hours=3), "f1", "form")
    [filled] = _take(sessions, rt, form)

    assert filled.outcome is not None and filled.outcome.points == 10
    assert [o.points for o in filled.stitched] == [7, 0]
    assert [rule for rule, _, _ in _ledger(sessions, ANA["email"])] == ["pricing", "form"]


def test_stitched_views_older_than_the_leads_own_respect_the_cap_both_ways_in_time(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    clock.advance(timedelta(days=3))
    _take(sessions, rt, Hit(None, ANA, "page_viewed", PRICING, START + timedelta(hours=48)))
    # the visitor saw pricing 10 hours before (inside the day: no points) and 2 days before
    _take(sessions, rt, _view("v1", 38), _view("v1", 0))
    _take(sessions, rt, Hit("v1", ANA))

    ledger = _ledger(sessions, ANA["email"])
    assert [(rule, at) for rule, _, at in ledger] == [
        ("pricing", START + timedelta(hours=48)),
        ("pricing", START),
    ]


def test_a_visitor_identified_as_a_second_lead_keeps_the_first_leads_past_and_follows_the_second(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    _take(sessions, rt, _view("v1", 1), Hit("v1", ANA))
    [switched] = _take(sessions, rt, Hit("v1", BEN))
    _take(sessions, rt, _view("v1", 30))

    assert switched.outcome is not None and switched.relinked_from is not None
    with sessions() as s:
        ana = s.scalars(select(Lead).where(Lead.email == ANA["email"])).one()
        ben = s.scalars(select(Lead).where(Lead.email == BEN["email"])).one()
        assert switched.relinked_from == ana.id
        assert s.get_one(Visitor, "v1").lead_id == ben.id
        counts = s.execute(select(Event.lead_id, func.count()).group_by(Event.lead_id))
        per_lead = {lead_id: count for lead_id, count in counts}
    assert per_lead == {ana.id: 1, ben.id: 1}


def test_joining_two_anonymous_ids_links_both_to_the_lead_one_has(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    _take(sessions, rt, _view("phone", 1), _view("laptop", 30), Hit("laptop", ANA))
    with sessions.begin() as s:
        joined = join(s, rt, "phone", "laptop")

    assert [len(t.stitched) for t in joined] == [1]
    assert len(_ledger(sessions, ANA["email"])) == 2
    with sessions() as s:
        assert s.get_one(Visitor, "phone").lead_id == s.get_one(Visitor, "laptop").lead_id


def _facts(sessions: sessionmaker[Session]) -> tuple[Any, ...]:
    """What hits left: events and ledger per lead (by email), visitors' links, kept events."""
    with sessions() as s:
        emails = {lead.id: lead.email for lead in s.scalars(select(Lead))}
        events = sorted(
            (emails[e.lead_id], e.type, e.occurred_at, e.idempotency_key, e.source)
            for e in s.scalars(select(Event))
        )
        ledger = sorted(
            (emails[e.lead_id], e.rule, e.points, e.occurred_at)
            for e in s.scalars(select(ScoreEntry))
        )
        links = sorted((v.id, emails.get(v.lead_id)) for v in s.scalars(select(Visitor)))
        kept = sorted((e.visitor_id, e.idempotency_key) for e in s.scalars(select(VisitorEvent)))
        scores = sorted((lead.email, lead.engagement) for lead in s.scalars(select(Lead)))
    return events, ledger, links, kept, scores


def _wipe(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        for table in reversed(Base.metadata.sorted_tables):
            s.execute(table.delete())


def test_visitors_identified_together_in_one_call_end_as_when_their_hits_come_one_by_one(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    ben_form = Hit("v2", BEN, "form_submitted", {}, START + timedelta(hours=3), "f2", "form")
    hits = [
        _view("v1", 0, "a"),
        _view("v2", 0.5, "b"),
        _view("v1", 1, "c"),
        Hit("v1", ANA, "form_submitted", {}, START + timedelta(hours=2), "f1", "form"),
        _view("v2", 2.5, "d"),
        ben_form,
        _view("v1", 26, "e"),  # after its form: straight to Ana
        _view("v3", 27, "f"),  # never identified
        Hit("v1", BEN, "form_submitted", {}, START + timedelta(hours=28), "f3", "form"),
        _view("v1", 29, "g"),  # now Ben's
        _view("v2", 30),  # no id: a random key, once
    ]
    together = _take(sessions, rt, *hits)
    batched = _facts(sessions)
    _wipe(sessions)
    alone = [_take(sessions, rt, hit)[0] for hit in hits]

    assert _facts(sessions)[:3] == batched[:3]
    assert [len(k) for k in (_facts(sessions)[3], batched[3])] == [1, 1]  # v3's one view
    assert _facts(sessions)[4] == batched[4]
    assert [len(t.stitched) for t in together] == [len(t.stitched) for t in alone]
    assert [t.relinked_from is not None for t in together] == [
        t.relinked_from is not None for t in alone
    ]
    events, _, links, _, _ = batched
    assert links == [("v1", BEN["email"]), ("v2", BEN["email"]), ("v3", None)]
    assert [e[1] for e in events if e[0] == ANA["email"]].count("page_viewed") == 3


def test_joining_two_ids_no_lead_has_moves_the_stored_events_to_the_current_id(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    _take(sessions, rt, _view("old", 1), _view("new", 30))
    with sessions.begin() as s:
        assert join(s, rt, "old", "new") == []
    [identified] = _take(sessions, rt, Hit("new", ANA))

    assert len(identified.stitched) == 2
    assert _count(sessions, VisitorEvent) == 0


@pytest.mark.parametrize(
    ("hit", "message"),
    [
        (Hit(None, None, "page_viewed"), "anonymous id or a lead"),
        (Hit("   ", None, "page_viewed"), "anonymous id: must not be blank"),
        (Hit("v" * 201, None, "page_viewed"), "at most 200"),
        (Hit("v1", None, "page viewed"), "invalid event type"),
        (Hit("v1", None, "page_viewed", {"t": "a\x00b"}), "NUL"),
    ],
)
def test_a_bad_hit_is_refused_before_anything_is_written(
    sessions: sessionmaker[Session], rt: Runtime, hit: Hit, message: str
) -> None:
    with pytest.raises(InvalidLeadError, match=message), sessions.begin() as s:
        take(s, rt, [_view("v0", 1), hit])
    assert _count(sessions, Visitor) == 0
