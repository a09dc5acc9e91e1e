"""SQL handoff: exactly one per crossing, with the reasons, under duplicates and concurrency."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from engine.clock import FrozenClock
from engine.funnel.service import recycle_lead, track, upsert_lead, win_lead
from engine.models import Enrolment, Event, Handoff, Lead
from engine.runner.inline import run_due
from engine.workflow.runtime import Runtime

VP = {"email": "vp@northwind.test", "title": "VP Engineering"}  # fit 10


def _handoffs(session: Session) -> list[Handoff]:
    return list(session.scalars(select(Handoff).order_by(Handoff.id)))


def _warm_up(sessions: sessionmaker[Session], rt: Runtime) -> None:
    """Bring the lead to 47 points (fit 10 + engagement 37): one click from SQL."""
    with sessions.begin() as s:
        upsert_lead(s, rt, VP)
        track(s, rt, VP, "form_submitted")
        track(s, rt, VP, "content_downloaded")
        track(s, rt, VP, "email_clicked")
        track(s, rt, VP, "email_clicked")
        track(s, rt, VP, "page_viewed", {"url": "/pricing"})
    run_due(sessions, rt)


def test_crossing_sql_ends_nurture_and_creates_one_handoff_with_its_reasons(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _warm_up(sessions, rt)
    clock.advance(timedelta(hours=1))
    with sessions.begin() as s:
        result = track(s, rt, VP, "email_clicked", {"url": "/demo"}, event_id="click-9")
        assert result.stage == "sql" and result.handoff_id is not None
    with sessions.begin() as s:
        (handoff,) = _handoffs(s)
        assert handoff.score["total"] == 53 and handoff.score["fit"] == 10
        rules = {r["rule"]: r["points"] for r in handoff.score["rules"]}
        assert rules == {"click": 18, "senior": 10, "form": 10, "download": 8, "pricing": 7}
        assert handoff.reasons["threshold"] == "score >= 50 and fit >= 10"
        assert handoff.reasons["recent_activity"][0]["type"] == "email_clicked"
        enrolments = s.scalars(select(Enrolment)).all()
        assert {(e.status, e.exit_reason) for e in enrolments} == {("exited", "sql")}
    with sessions.begin() as s:  # the same event again, and more activity: still one handoff
        assert track(s, rt, VP, "email_clicked", {"url": "/demo"}, event_id="click-9").duplicate
        track(s, rt, VP, "demo_requested")
        assert len(_handoffs(s)) == 1


def test_recycling_restarts_engagement_and_a_new_crossing_makes_a_second_handoff(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _warm_up(sessions, rt)
    with sessions.begin() as s:
        lead_id = track(s, rt, VP, "demo_requested").lead_id
    with sessions.begin() as s:
        lead = recycle_lead(s, rt, lead_id, "not ready this quarter").lead
        assert (lead.stage, lead.engagement, lead.fit) == ("recycled", 0, 10)
        winback = s.scalars(select(Enrolment).where(Enrolment.sequence == "winback")).one()
        assert winback.trigger == "recycled"
    clock.advance(timedelta(days=1))
    with sessions.begin() as s:
        track(s, rt, VP, "demo_requested")
        track(s, rt, VP, "form_submitted")
        assert [h.crossing for h in _handoffs(s)] == [1, 2]


def test_a_won_lead_becomes_a_customer_and_leaves_every_sequence(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        win_lead(s, rt, track(s, rt, VP, "form_submitted").lead_id)
        assert s.scalars(select(Lead)).one().stage == "customer"
        assert s.scalars(select(Enrolment)).one().exit_reason == "customer"


def _in_parallel(count: int, work: Callable[[int], None]) -> list[BaseException]:
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            work(index)
        except BaseException as error:  # noqa: BLE001 - collected and asserted by the test
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
def test_two_processes_crossing_at_once_create_exactly_one_handoff(
    db: Engine, sessions: sessionmaker[Session], rt: Runtime
) -> None:
    _warm_up(sessions, rt)

    def click(index: int) -> None:
        with sessions.begin() as s:
            track(s, rt, VP, "email_clicked", {"n": index}, event_id=f"click-{index}")

    assert _in_parallel(2, click) == []
    with sessions.begin() as s:
        assert len(_handoffs(s)) == 1
        assert s.scalars(select(Lead)).one().engagement == 37 + 12


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
def test_the_same_event_posted_ten_times_at_once_counts_once(
    db: Engine, sessions: sessionmaker[Session], rt: Runtime
) -> None:
    def post(_: int) -> None:
        with sessions.begin() as s:
            track(s, rt, {"email": "new@lead.test"}, "form_submitted", event_id="form-1")

    assert _in_parallel(10, post) == []
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 1
        assert s.scalar(select(func.count()).select_from(Lead)) == 1
        assert s.scalars(select(Lead)).one().engagement == 10
        assert s.scalar(select(func.count()).select_from(Enrolment)) == 1
