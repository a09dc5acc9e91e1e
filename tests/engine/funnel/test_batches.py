"""Events in batches: one pass for many events counts each once and changes what the same
events one by one would change; a failure inside a batch loses no event."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from engine.clock import FrozenClock
from engine.db import make_engine, make_sessionmaker
from engine.errors import InvalidLeadError
from engine.funnel import service
from engine.funnel.service import NewEvent, record, track
from engine.models import Base, Enrolment, Event, EventStatus, Lead, ScoreEntry
from engine.workflow.runtime import Runtime
from tests.conftest import START

ANA = {"email": "ana@northwind.test", "title": "VP Marketing"}
BEN = {"email": "ben@contoso.test"}


def _count(session: Session, model: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_a_key_repeated_in_a_batch_and_across_batches_counts_once(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        first = record(
            s,
            rt,
            [
                NewEvent(ANA, "form_submitted", event_id="k1"),
                NewEvent(BEN, "content_downloaded", event_id="k2"),
                NewEvent(ANA, "form_submitted", event_id="k1"),
                NewEvent(ANA, "email_clicked"),
            ],
        )
    assert [o.duplicate for o in first] == [False, False, True, False]
    assert first[2].event_id == first[0].event_id
    with sessions.begin() as s:
        second = record(
            s,
            rt,
            [NewEvent(BEN, "content_downloaded", event_id="k2"), NewEvent(BEN, "form_submitted")],
        )
    assert [o.duplicate for o in second] == [True, False]
    assert second[0].event_id == first[1].event_id
    with sessions.begin() as s:
        assert _count(s, Event) == 4
        points = dict(s.execute(select(Lead.email, Lead.engagement)).all())
    assert points == {"ana@northwind.test": 16.0, "ben@contoso.test": 18.0}


def test_an_invalid_event_refuses_the_batch_before_anything_is_stored(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with pytest.raises(InvalidLeadError), sessions.begin() as s:
        record(s, rt, [NewEvent(ANA, "form_submitted"), NewEvent({"email": "nope"}, "x")])
    with sessions.begin() as s:
        assert (_count(s, Event), _count(s, Lead)) == (0, 0)


def test_a_failure_of_one_events_consequences_in_a_batch_leaves_the_others_processed(
    sessions: sessionmaker[Session], rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = service.evaluate_stage

    def failing_for_ben(session: Session, rt: Runtime, lead: Lead, cause: str) -> Any:
        if lead.email == BEN["email"]:
            raise RuntimeError("scoring exploded")
        return real(session, rt, lead, cause)

    monkeypatch.setattr(service, "evaluate_stage", failing_for_ben)
    with sessions.begin() as s:
        outcomes = record(
            s,
            rt,
            [
                NewEvent(ANA, "form_submitted", event_id="a1"),
                NewEvent(BEN, "content_downloaded", event_id="b1"),
                NewEvent(ANA, "content_downloaded", event_id="a2"),
            ],
        )
    assert [o.failed is not None for o in outcomes] == [False, True, False]
    with sessions.begin() as s:
        statuses = dict(s.execute(select(Event.idempotency_key, Event.status)).all())
        ana = s.scalars(select(Lead).where(Lead.email == ANA["email"])).one()
        ben = s.scalars(select(Lead).where(Lead.email == BEN["email"])).one()
        ledger = Counter(s.scalars(select(ScoreEntry.lead_id)))
    assert statuses == {"a1": "processed", "b1": "failed", "a2": "processed"}
    assert (ana.engagement, ben.engagement) == (18.0, 0.0)
    assert ledger[ben.id] == 0  # the failed event's points went back with its savepoint
    assert ledger[ana.id] == 3  # two events and the fit rule (VP)


def test_a_batch_that_dies_before_commit_stores_nothing_and_its_retry_counts_each_once(
    sessions: sessionmaker[Session], rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = [
        NewEvent(ANA, "form_submitted", event_id="a1"),
        NewEvent(BEN, "content_downloaded", event_id="b1"),
    ]

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # the process stops mid-batch: not an error a savepoint takes

    with monkeypatch.context() as patch:
        patch.setattr(service, "on_lead_changed", killed)
        with pytest.raises(KeyboardInterrupt), sessions.begin() as s:
            record(s, rt, batch)
    with sessions.begin() as s:
        assert _count(s, Event) == 0
    for _ in range(2):  # the broker redelivers the message, then a duplicate of it
        with sessions.begin() as s:
            record(s, rt, batch)
    with sessions.begin() as s:
        assert _count(s, Event) == 2
        assert sorted(s.scalars(select(Lead.engagement))) == [8.0, 10.0]


# -- one by one and in batches: the same ledger, the same stage ---------------------------

LEADS = [
    {"email": "ana@northwind.test", "title": "VP Marketing"},
    {"email": "ben@gmail.com"},
    {"email": "cy@contoso.test", "title": "Director of Sales"},
]
KINDS = [
    ("form_submitted", {}),
    ("content_downloaded", {"title": "Report"}),
    ("page_viewed", {"url": "https://acme.test/pricing"}),
    ("page_viewed", {"url": "https://acme.test/blog"}),
    ("newsletter_subscribed", {}),
    ("email_clicked", {}),
    ("email_opened", {}),
    ("demo_requested", {}),
    ("unsubscribed", {}),
]
event_strategy = st.tuples(
    st.integers(0, len(LEADS) - 1),
    st.integers(0, len(KINDS) - 1),
    st.integers(0, 40 * 24),  # hours after START: late and out of order within a batch
    st.one_of(st.none(), st.integers(0, 6).map(lambda n: f"key-{n}")),
)


@pytest.fixture
def two_databases(tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    engines = tuple(make_engine(f"sqlite:///{tmp_path / f'{n}.db'}") for n in ("one", "many"))
    yield engines  # type: ignore[misc]
    for engine in engines:
        engine.dispose()


def _state(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """What scoring and the journey made of the events, by lead email, ids left out."""
    with sessions() as s:
        emails = dict(s.execute(select(Lead.id, Lead.email)).all())
        leads = {
            lead.email: (lead.stage, lead.fit, lead.engagement, lead.sql_crossings)
            for lead in s.scalars(select(Lead))
        }
        ledger = Counter(
            (emails[e.lead_id], e.kind, e.rule, e.points, e.reason, e.occurred_at)
            for e in s.scalars(select(ScoreEntry))
        )
        enrolments = Counter(
            (emails[e.lead_id], e.sequence, e.milestone, e.status, e.exit_reason)
            for e in s.scalars(select(Enrolment))
        )
        events = Counter(
            (emails[e.lead_id], e.type, e.idempotency_key, e.status)
            for e in s.scalars(select(Event))
        )
    return {"leads": leads, "ledger": ledger, "enrolments": enrolments, "events": events}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    events=st.lists(event_strategy, min_size=1, max_size=30),
    cuts=st.lists(st.integers(1, 29), max_size=4),
)
def test_a_batch_gives_the_same_ledger_stage_and_journey_as_its_events_one_by_one(
    two_databases: tuple[Engine, Engine],
    rt: Runtime,
    shipped_rt: Runtime,
    clock: FrozenClock,
    events: list[tuple[int, int, int, str | None]],
    cuts: list[int],
) -> None:
    for runtime in (rt, shipped_rt):  # the shipped sequences test events within windows
        _compare(two_databases, runtime, clock, events, cuts)


def _compare(
    two_databases: tuple[Engine, Engine],
    rt: Runtime,
    clock: FrozenClock,
    events: list[tuple[int, int, int, str | None]],
    cuts: list[int],
) -> None:
    one, many = two_databases
    for engine in (one, many):
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
    clock.set(START + timedelta(days=41))  # after every event: all of them are in the past
    new = [
        NewEvent(
            # attributes ride on the first event of each lead: a batch applies them up front
            LEADS[who] if first else {"email": LEADS[who]["email"]},
            KINDS[kind][0],
            KINDS[kind][1],
            START + timedelta(hours=hours),
            key and f"{who}:{key}",  # a retried event names its own lead again
        )
        for index, (who, kind, hours, key) in enumerate(events)
        for first in [all(w != who for w, *_ in events[:index])]
    ]
    alone, together = make_sessionmaker(one), make_sessionmaker(many)
    for event in new:
        with alone.begin() as s:
            outcome = track(
                s,
                rt,
                event.lead,
                event.type,
                event.properties,
                occurred_at=event.occurred_at,
                event_id=event.event_id,
            )
            assert outcome.failed is None
    bounds = sorted({c for c in cuts if c < len(new)} | {0, len(new)})
    for start, end in zip(bounds, bounds[1:], strict=False):
        with together.begin() as s:
            assert all(o.failed is None for o in record(s, rt, new[start:end]))
    assert _state(together) == _state(alone)
    with together() as s:
        assert all(e.status == EventStatus.PROCESSED for e in s.scalars(select(Event)))
