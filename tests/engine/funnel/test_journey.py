"""The journey: enrolment, steps and waits, score triggers mid-drip, branches, timeouts, exits."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from engine.clock import FrozenClock
from engine.funnel.service import track
from engine.models import Delivery, Enrolment, Lead, MilestoneVisit
from engine.runner.inline import run_due
from engine.workflow.runtime import Runtime

ANA = {"email": "ana@northwind.test"}


def _enrolment(session: Session, sequence: str = "drip") -> Enrolment:
    return session.scalars(
        select(Enrolment).where(Enrolment.sequence == sequence).order_by(Enrolment.id.desc())
    ).first()  # type: ignore[return-value]


def _sends(session: Session) -> list[tuple[str, str, str]]:
    rows = session.scalars(select(Delivery).order_by(Delivery.planned_at, Delivery.step))
    return [(d.template, d.channel, d.status) for d in rows]


class TickingClock(FrozenClock):
    """A clock that moves a microsecond on every read, as a real one does between reads."""

    def now(self) -> datetime:
        self.advance(timedelta(microseconds=1))
        return super().now()


def test_the_enrolment_an_event_starts_is_reported_due_on_a_running_clock(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    running = replace(rt, clock=TickingClock(clock.now()))
    with sessions.begin() as s:
        result = track(s, running, ANA, "form_submitted")
        assert result.due_enrolments == [_enrolment(s).id]


def test_an_event_trigger_enrols_the_lead_and_steps_run_with_waits_in_the_database(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    with sessions.begin() as s:
        result = track(s, rt, ANA, "form_submitted")
        assert len(result.due_enrolments) == 1
    run_due(sessions, rt)
    with sessions.begin() as s:
        assert _sends(s) == [("welcome", "email", "planned")]
        enrolment = _enrolment(s)
        assert enrolment.next_run_at == clock.now() + timedelta(days=2)
    clock.advance(timedelta(days=1, hours=23))
    run_due(sessions, rt)
    with sessions.begin() as s:
        assert len(_sends(s)) == 1  # the wait is not over
    clock.advance(timedelta(hours=1))
    run_due(sessions, rt)
    clock.advance(timedelta(days=3))
    run_due(sessions, rt)
    with sessions.begin() as s:
        assert [t for t, _, _ in _sends(s)] == ["welcome", "case_study", "quick_question"]
        assert _enrolment(s).exhausted


def test_a_lead_is_not_enrolled_twice_in_a_running_sequence(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "form_submitted")
        track(s, rt, ANA, "content_downloaded")
        count = len(list(s.scalars(select(Enrolment).where(Enrolment.sequence == "drip"))))
    assert count == 1


def test_a_score_trigger_moves_the_lead_mid_drip_and_stale_steps_are_skipped(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "form_submitted")  # 10
    run_due(sessions, rt)  # welcome planned, waiting 2d
    clock.advance(timedelta(hours=5))
    with sessions.begin() as s:
        track(s, rt, ANA, "content_downloaded")  # 18
        assert _enrolment(s).milestone == "awareness"
        track(s, rt, ANA, "email_clicked")  # 24 >= 20
        enrolment = _enrolment(s)
        assert (enrolment.milestone, enrolment.next_run_at) == ("consideration", clock.now())
    run_due(sessions, rt)
    with sessions.begin() as s:
        assert _sends(s) == [("welcome", "email", "skipped"), ("pricing_guide", "email", "planned")]
        visits = s.scalars(select(MilestoneVisit).order_by(MilestoneVisit.id))
        assert [(v.milestone, v.reason) for v in visits] == [
            ("awareness", "enrolled on event form_submitted"),
            ("consideration", "enter_when: score >= 20"),
        ]


def test_a_lead_that_already_qualifies_starts_at_the_furthest_milestone(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "demo_requested")  # 30 points, no enrolment yet
        track(s, rt, ANA, "form_submitted")
        assert _enrolment(s).milestone == "consideration"


def _to_consideration(sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "form_submitted")
        track(s, rt, ANA, "content_downloaded")
        track(s, rt, ANA, "page_viewed", {"url": "/pricing"})  # 25
    run_due(sessions, rt)


def test_a_branch_takes_then_when_the_lead_clicked_within_two_days(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _to_consideration(sessions, rt, clock)
    clock.advance(timedelta(days=1))
    with sessions.begin() as s:
        track(s, rt, ANA, "email_clicked", {"url": "https://acme.test/pricing"})
    clock.advance(timedelta(days=1))
    run_due(sessions, rt)
    with sessions.begin() as s:
        assert [t for t, _, _ in _sends(s)] == ["pricing_guide", "demo_invite"]


def test_a_branch_takes_else_when_the_lead_did_not_click(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    _to_consideration(sessions, rt, clock)
    clock.advance(timedelta(days=2))
    run_due(sessions, rt)
    with sessions.begin() as s:
        assert [(t, c) for t, c, _ in _sends(s)] == [
            ("pricing_guide", "email"),
            ("demo_nudge", "sms"),
        ]


def test_an_exhausted_milestone_times_out_to_its_goto(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "form_submitted")
    for days in (0, 2, 3):
        clock.advance(timedelta(days=days))
        run_due(sessions, rt)
    clock.advance(timedelta(days=13))
    run_due(sessions, rt)
    with sessions.begin() as s:
        assert _enrolment(s).status == "active"
    clock.advance(timedelta(days=1))
    run_due(sessions, rt)
    with sessions.begin() as s:
        enrolment = _enrolment(s)
        assert (enrolment.status, enrolment.exit_reason) == (
            "exited",
            "completed (awareness timed out)",
        )


def test_an_exit_rule_ends_the_enrolment_and_skips_its_planned_sends(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "form_submitted")
    run_due(sessions, rt)
    clock.advance(timedelta(hours=1))
    with sessions.begin() as s:
        track(s, rt, ANA, "unsubscribed")
        enrolment = _enrolment(s)
        assert (enrolment.status, enrolment.exit_reason) == ("exited", "exit_when: unsubscribed")
        assert _sends(s) == [("welcome", "email", "skipped")]
    clock.advance(timedelta(days=30))
    run_due(sessions, rt)
    with sessions.begin() as s:
        assert len(_sends(s)) == 1


def test_a_stale_duplicate_advance_does_nothing(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    from engine.runner.scheduler import advance_enrolment

    with sessions.begin() as s:
        track(s, rt, ANA, "form_submitted")
        enrolment_id = _enrolment(s).id
    with sessions.begin() as s:
        assert len(advance_enrolment(s, rt, enrolment_id)) == 1
    with sessions.begin() as s:
        assert advance_enrolment(s, rt, enrolment_id) == []  # waiting: a repeat plans nothing
        assert len(_sends(s)) == 1


def test_leads_in_sales_hands_are_not_enrolled(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        track(s, rt, {**ANA, "title": "VP Sales"}, "demo_requested")
        track(s, rt, ANA, "email_clicked")
        track(s, rt, ANA, "email_clicked")  # 42 + fit 10 = 52 -> sql
        assert s.scalars(select(Lead)).one().stage == "sql"
        track(s, rt, ANA, "form_submitted")
        assert s.scalars(select(Enrolment)).all() == []
