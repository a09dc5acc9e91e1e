"""Scoring: points, limits, negative points, fit, decay and the ledger that explains them."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from engine.clock import FrozenClock
from engine.funnel.service import track, upsert_lead
from engine.models import Event, Lead, ScoreEntry
from engine.runner.inline import run_due
from engine.workflow.runtime import Runtime

ANA = {"email": "Ana@Northwind.test"}


def _lead(session: Session, email: str = "ana@northwind.test") -> Lead:
    return session.scalars(select(Lead).where(Lead.email_key == email)).one()


def _ledger(session: Session, lead: Lead) -> list[tuple[str, float, str]]:
    rows = session.scalars(
        select(ScoreEntry).where(ScoreEntry.lead_id == lead.id).order_by(ScoreEntry.id)
    )
    return [(r.rule, r.points, r.reason) for r in rows]


def test_download_pricing_and_subscription_make_an_mql_with_the_shipped_points(
    sessions: sessionmaker[Session], shipped_rt: Runtime, clock: FrozenClock
) -> None:
    with sessions.begin() as s:
        track(s, shipped_rt, ANA, "content_downloaded", {"title": "Benchmark report"})
        clock.advance(timedelta(hours=1))
        track(s, shipped_rt, ANA, "page_viewed", {"url": "https://acme.test/pricing"})
        assert _lead(s).stage == "lead"
        clock.advance(timedelta(hours=1))
        result = track(s, shipped_rt, ANA, "newsletter_subscribed")
    with sessions.begin() as s:
        lead = _lead(s)
        assert (lead.engagement, lead.fit, lead.stage) == (20, 0, "mql")
        assert result.stage == "mql"
        assert [points for _, points, _ in _ledger(s, lead)] == [8, 7, 5]


def test_email_is_normalised_so_one_person_is_one_lead(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        track(s, rt, {"email": " ANA@northwind.TEST "}, "form_submitted")
        track(s, rt, {"email": "ana@northwind.test"}, "content_downloaded")
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Lead)) == 1
        assert _lead(s).engagement == 18


def test_a_limit_of_once_per_day_scores_the_second_view_on_the_next_day_only(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    pricing = {"url": "/pricing"}
    with sessions.begin() as s:
        first = track(s, rt, ANA, "page_viewed", pricing)
        clock.advance(timedelta(hours=3))
        second = track(s, rt, ANA, "page_viewed", pricing)
        clock.advance(timedelta(days=1))
        third = track(s, rt, ANA, "page_viewed", pricing)
        other_page = track(s, rt, ANA, "page_viewed", {"url": "/blog"})
    assert [first.points, second.points, third.points, other_page.points] == [7, 0, 7, 0]


def test_a_late_event_counts_against_the_limit_of_the_day_it_happened(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    pricing = {"url": "/pricing"}
    with sessions.begin() as s:
        clock.advance(timedelta(days=3))
        track(s, rt, ANA, "page_viewed", pricing)
        late_same_day = track(
            s, rt, ANA, "page_viewed", pricing, occurred_at=clock.now() - timedelta(hours=5)
        )
        late_other_day = track(
            s, rt, ANA, "page_viewed", pricing, occurred_at=clock.now() - timedelta(days=2)
        )
    assert (late_same_day.points, late_other_day.points) == (0, 7)


def test_a_late_event_does_not_move_last_activity_backwards(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "form_submitted")
        now = clock.now()
        track(s, rt, ANA, "email_clicked", occurred_at=now - timedelta(days=4))
        assert _lead(s).last_activity_at == now


def test_once_ever_scores_a_subscription_a_single_time(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "newsletter_subscribed")
        clock.advance(timedelta(days=40))
        again = track(s, rt, ANA, "newsletter_subscribed")
    assert again.points == 0


def test_the_same_event_id_counts_once(sessions: sessionmaker[Session], rt: Runtime) -> None:
    with sessions.begin() as s:
        first = track(s, rt, ANA, "form_submitted", event_id="evt-1")
    with sessions.begin() as s:
        repeat = track(s, rt, ANA, "form_submitted", event_id="evt-1")
    assert (first.duplicate, repeat.duplicate) == (False, True)
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 1
        assert _lead(s).engagement == 10


def test_negative_points_lower_the_score_and_unsubscribing_withdraws_email_consent(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "form_submitted")
        result = track(s, rt, ANA, "unsubscribed")
        lead = _lead(s)
        assert (result.points, lead.engagement, lead.email_consent) == (-15, -5, False)
        assert _ledger(s, lead)[-1][:2] == ("unsubscribe", -15)


def test_fit_follows_attribute_changes_with_a_ledger_row_per_rule(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        upsert_lead(s, rt, {"email": "bo@gmail.com", "title": "VP Marketing"})
    with sessions.begin() as s:
        lead = _lead(s, "bo@gmail.com")
        assert lead.fit == 5
        upsert_lead(s, rt, {"email": "bo@gmail.com", "title": "Marketing intern"})
        assert lead.fit == -5
        assert [(rule, points) for rule, points, _ in _ledger(s, lead)] == [
            ("senior", 10),
            ("free_mail", -5),
            ("senior", -10),
        ]
        assert _ledger(s, lead)[-1][2].startswith("no longer: ")


def test_engagement_decays_with_inactivity_and_an_mql_slips_back_to_lead(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "form_submitted")
        track(s, rt, ANA, "content_downloaded")
        track(s, rt, ANA, "newsletter_subscribed")
        assert _lead(s).stage == "mql"  # 23 points
    clock.advance(timedelta(days=6))
    run_due(sessions, rt)
    with sessions.begin() as s:
        assert (_lead(s).engagement, _lead(s).stage) == (23, "mql")
    clock.advance(timedelta(days=1))
    run_due(sessions, rt)
    with sessions.begin() as s:
        lead = _lead(s)
        assert (lead.engagement, lead.stage) == (18, "lead")
        assert _ledger(s, lead)[-1] == ("decay", -5, "inactive for 7 days")
        winback = [e for e in _enrolments(s, lead) if e.sequence == "winback"]
        assert [e.trigger for e in winback] == ["slipped_back mql"]
    clock.advance(timedelta(days=30))
    run_due(sessions, rt)
    with sessions.begin() as s:
        assert _lead(s).engagement == 0  # decay stops at zero, never below


def test_a_lead_idle_for_the_inactive_period_fires_the_inactive_trigger_once(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "newsletter_subscribed")
    clock.advance(timedelta(days=30))
    run_due(sessions, rt)
    clock.advance(timedelta(days=30))
    run_due(sessions, rt)
    with sessions.begin() as s:
        triggers = [e.trigger for e in _enrolments(s, _lead(s))]
        assert triggers == ["inactive"]


def _enrolments(session: Session, lead: Lead) -> list:  # type: ignore[type-arg]
    from engine.models import Enrolment

    return list(
        session.scalars(
            select(Enrolment).where(Enrolment.lead_id == lead.id).order_by(Enrolment.id)
        )
    )
