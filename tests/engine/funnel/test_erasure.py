"""Erasure on SQLite and PostgreSQL: no personal data left in any column of any table, while
the tombstone keeps the funnel's counts and the suppression list keeps blocking the person's
addresses; running work stops; late provider feedback writes nothing back; retention erases
only leads idle past the period, once."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine, func, select

from channels.base import EMAIL, DeliveryEvent
from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.feedback import record_delivery_event
from engine.delivery.handoff import (
    HandoffAttempt,
    claim_due_handoffs,
    deliver_handoff,
    notify_owner,
)
from engine.delivery.process import CrmTarget
from engine.delivery.sending import send_delivery
from engine.errors import InvalidLeadError, UnknownLeadError
from engine.funnel.erasure import erase_idle, erase_lead, hashed_address, months_before
from engine.funnel.rescore import rescore
from engine.funnel.service import recycle_lead, track, win_lead
from engine.models import (
    Delivery,
    DeliveryStatus,
    Enrolment,
    EnrolmentStatus,
    Erasure,
    ErasureReason,
    Event,
    Handoff,
    HandoffStatus,
    Lead,
    ScoreEntry,
    Stage,
    Suppression,
)
from engine.read.stats import funnel
from engine.read.views import find_by_key
from engine.runner.actors import Tasks
from engine.runner.inline import run_due
from tests.apps import outbox_app
from tests.conftest import _truncate
from tests.engine import rows
from tests.engine.privacy import EMAIL_ADDRESS, PHONE, person, personal_data_left


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    return outbox_app(db, clock, tmp_path)


def _erase(app: App, lead_id: int, via: str = "cli") -> dict[str, object]:
    with app.sessions.begin() as session:
        return erase_lead(session, app.rt, lead_id, ErasureReason.REQUEST, via).as_dict()


def test_an_erased_lead_leaves_no_personal_data_in_any_column_of_any_table(
    nurture: App, clock: FrozenClock, db: Engine
) -> None:
    anastasia = person(nurture, clock)
    assert personal_data_left(db)  # the scan finds what is there
    with nurture.sessions() as session:
        before = funnel(session, nurture.rt)

    done = _erase(nurture, anastasia.lead_id)

    assert personal_data_left(db) == []
    with nurture.sessions() as session:
        assert funnel(session, nurture.rt) == before
        (erasure,) = session.scalars(select(Erasure)).all()
        assert (erasure.lead_id, erasure.reason, erasure.via) == (
            anastasia.lead_id,
            ErasureReason.REQUEST,
            "cli",
        )
        assert erasure.summary == done["summary"]
        assert erasure.summary["removed"] == {
            "visitors": 1,
            "visitor_events": 1,
            "lead_aliases": 0,
            "lead_conflicts": 0,
        }
        assert erasure.summary["scrubbed"]["suppressions"] == 2
        tombstone = session.get_one(Lead, anastasia.lead_id)
        assert tombstone.key == f"lead {anastasia.lead_id}"
        assert tombstone.erased_at == clock.now()
        assert tombstone.stage == "sql" and tombstone.score > 0
        # the counts' rows stay: event types, the sent email, the ledger's points
        kept = session.scalars(select(Event).where(Event.lead_id == anastasia.lead_id)).all()
        assert sorted(e.type for e in kept) == [
            "demo_requested",
            "email_clicked",
            "form_submitted",
            "topic_unsubscribed",
        ]
        clicked = next(e for e in kept if e.type == "email_clicked")
        assert clicked.properties == {"delivery_id": anastasia.delivery_id}
        assert session.scalar(
            select(func.sum(ScoreEntry.points)).where(ScoreEntry.lead_id == anastasia.lead_id)
        ) == pytest.approx(tombstone.score)
        sent = session.get_one(Delivery, anastasia.delivery_id)
        assert sent.status == DeliveryStatus.SENT and sent.subject is None
        assert {s.address for s in session.scalars(select(Suppression))} == {
            hashed_address(EMAIL_ADDRESS),
            hashed_address(PHONE),
        }
        with pytest.raises(UnknownLeadError):
            find_by_key(session, EMAIL_ADDRESS)


def test_the_suppression_still_blocks_the_address_when_the_person_comes_back_as_a_new_lead(
    nurture: App, clock: FrozenClock
) -> None:
    anastasia = person(nurture, clock)
    _erase(nurture, anastasia.lead_id)

    with nurture.sessions.begin() as session:
        back = track(session, nurture.rt, {"email": EMAIL_ADDRESS}, "form_submitted").lead.id
    run_due(nurture.sessions, nurture.rt)

    assert back != anastasia.lead_id
    with nurture.sessions() as session:
        planned = session.scalars(select(Delivery.id).where(Delivery.lead_id == back)).all()
    assert planned
    assert [send_delivery(nurture, delivery_id) for delivery_id in planned] == ["not sent"] * len(
        planned
    )
    with nurture.sessions() as session:
        skipped = session.scalars(select(Delivery).where(Delivery.lead_id == back)).all()
        assert {(d.status, d.detail) for d in skipped} == {
            (DeliveryStatus.SKIPPED, f"suppressed: {EMAIL_ADDRESS}")
        }


def test_erasing_ends_running_enrolments_skips_planned_sends_and_withdraws_pending_handoffs(
    nurture: App, clock: FrozenClock
) -> None:
    anastasia = person(nurture, clock)  # handed off: her drip ended, the handoff is pending
    with nurture.sessions.begin() as session:
        lead_id = track(session, nurture.rt, {"email": "bo@x.test"}, "form_submitted").lead.id
    run_due(nurture.sessions, nurture.rt)
    with nurture.sessions.begin() as session:
        session.scalars(select(Handoff)).one().owner = "rep@acme.test"

    bo = _erase(nurture, lead_id, via="api")
    handed = _erase(nurture, anastasia.lead_id)

    assert bo["summary"]["stopped"]["enrolments"] == 1  # type: ignore[index]
    assert bo["summary"]["stopped"]["deliveries"] >= 1  # type: ignore[index]
    assert handed["summary"]["stopped"] == {"enrolments": 0, "deliveries": 0, "handoffs": 1}
    with nurture.sessions() as session:
        enrolments = session.scalars(select(Enrolment).where(Enrolment.lead_id == lead_id)).all()
        assert {(e.status, e.exit_reason) for e in enrolments} == {
            (EnrolmentStatus.EXITED, "erased")
        }
        sends = session.scalars(select(Delivery).where(Delivery.lead_id == lead_id)).all()
        assert {d.status for d in sends} == {DeliveryStatus.SKIPPED}
        handoff = session.scalars(select(Handoff)).one()
        assert handoff.status == HandoffStatus.WITHDRAWN and handoff.next_attempt_at is None
        assert handoff.reasons["recent_activity"] == []
    with nurture.sessions.begin() as session:
        later = clock.now() + timedelta(days=1)
        assert claim_due_handoffs(session, later, 10) == []
    # A message queued before the erasure posts nothing (the CRM address would refuse) and
    # notifies nobody.
    crm = CrmTarget("http://127.0.0.1:9/crm", "crm-secret")
    attempt = deliver_handoff(nurture.sessions, nurture.rt, crm, handoff.id)
    assert attempt == HandoffAttempt.WITHDRAWN
    owner = nurture.channels[EMAIL]
    assert not notify_owner(nurture.sessions, nurture.rt, owner, "n@x.test", handoff.id)


def test_erasing_an_erased_lead_is_refused_and_logs_nothing_more(
    nurture: App, clock: FrozenClock
) -> None:
    with nurture.sessions.begin() as session:
        lead_id = rows.lead(session, "cy@x.test").id
    _erase(nurture, lead_id)

    with pytest.raises(UnknownLeadError, match=f"lead {lead_id} was already erased"):
        _erase(nurture, lead_id)
    with pytest.raises(UnknownLeadError, match="no lead with id 999"):
        _erase(nurture, 999)
    with nurture.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Erasure)) == 1


def test_sales_actions_and_a_rescore_leave_a_tombstone_alone(nurture: App) -> None:
    with nurture.sessions.begin() as session:
        lead = rows.lead(session, "cy@x.test")
        lead.stage, lead.engagement, lead_id = Stage.SQL, 99.0, lead.id
    _erase(nurture, lead_id)
    for action in (recycle_lead, win_lead):
        with pytest.raises(InvalidLeadError, match=f"lead {lead_id} was erased"):
            with nurture.sessions.begin() as session:
                action(session, nurture.rt, lead_id, "by hand")
    rescore(nurture.sessions, nurture.rt)
    with nurture.sessions() as session:
        lead = session.get_one(Lead, lead_id)
        assert (lead.stage, lead.engagement) == (Stage.SQL, 99.0)


def test_provider_feedback_on_an_erased_leads_send_writes_nothing_back(
    nurture: App, clock: FrozenClock, db: Engine
) -> None:
    anastasia = person(nurture, clock)
    _erase(nurture, anastasia.lead_id)
    with nurture.sessions() as session:
        events = session.scalar(select(func.count()).select_from(Event))

    def feedback(kind: str) -> str:
        event = DeliveryEvent(
            kind=kind,
            channel=EMAIL,
            provider="sendgrid",
            provider_event_id=f"late-{kind}",
            occurred_at=clock.now(),
            delivery_id=anastasia.delivery_id,
            provider_message_id="msg-late",
            recipient=EMAIL_ADDRESS,
            url=f"https://acme.test/?who={EMAIL_ADDRESS}",
            reason=f"550 no such user {EMAIL_ADDRESS}",
        )
        with nurture.sessions.begin() as session:
            return record_delivery_event(session, nurture.rt, event).action

    assert feedback("clicked") == "ignored"
    assert feedback("accepted") == "ignored"
    assert feedback("bounced") == "suppressed"  # as its hash, which is already there
    assert personal_data_left(db) == []
    with nurture.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Event)) == events
        assert session.scalar(select(func.count()).select_from(Suppression)) == 2
        assert session.get_one(Delivery, anastasia.delivery_id).provider_message_id is None


def test_retention_erases_only_leads_idle_past_the_period_and_each_once(
    nurture: App, clock: FrozenClock
) -> None:
    long_ago = clock.now() - timedelta(days=400)
    with nurture.sessions.begin() as session:
        idle = rows.lead(session, "idle@x.test", at=long_ago).id
        was_idle = rows.lead(session, "back@x.test", at=long_ago).id
        active = rows.lead(
            session, "active@x.test", at=long_ago, last_activity_at=clock.now() - timedelta(days=30)
        ).id
        new = rows.lead(session, "new@x.test").id
    with nurture.sessions.begin() as session:  # came back before the erasure took its lock
        track(session, nurture.rt, {"email": "back@x.test"}, "page_viewed")

    with nurture.sessions.begin() as session:
        first = erase_idle(session, nurture.rt, 12, "cli")
    with nurture.sessions.begin() as session:
        again = erase_idle(session, nurture.rt, 12, "cli")

    assert [e.lead_id for e in first] == [idle] and again == []
    with nurture.sessions() as session:
        erased = {
            lead.id for lead in session.scalars(select(Lead).where(Lead.erased_at.isnot(None)))
        }
        assert erased == {idle}
        assert {was_idle, active, new}.isdisjoint(erased)
        assert session.scalars(select(Erasure.reason)).all() == [ErasureReason.RETENTION]


def test_the_scheduler_erases_idle_leads_at_most_hourly_in_batches(
    db: Engine, clock: FrozenClock, tmp_path: Path
) -> None:
    app = outbox_app(db, clock, tmp_path, NURTURE_RETENTION_MONTHS="6")
    tasks = Tasks(StubBroker(), app)
    with app.sessions.begin() as session:
        first = rows.lead(session, "a@x.test", at=clock.now() - timedelta(days=200)).id

    tasks.scheduler_pass()
    with app.sessions.begin() as session:
        second = rows.lead(session, "b@x.test", at=clock.now() - timedelta(days=200)).id
    clock.advance(timedelta(minutes=30))
    tasks.scheduler_pass()
    with app.sessions() as session:
        assert session.scalars(select(Erasure.lead_id)).all() == [first]
    clock.advance(timedelta(minutes=31))
    tasks.scheduler_pass()

    with app.sessions() as session:
        log = session.scalars(select(Erasure).order_by(Erasure.id)).all()
        assert [(e.lead_id, e.via, e.reason) for e in log] == [
            (first, "scheduler", ErasureReason.RETENTION),
            (second, "scheduler", ErasureReason.RETENTION),
        ]


def test_months_before_counts_calendar_months_and_keeps_to_the_months_last_day() -> None:
    assert months_before(datetime(2026, 3, 31, 8, tzinfo=UTC), 1) == datetime(
        2026, 2, 28, 8, tzinfo=UTC
    )
    assert months_before(datetime(2026, 1, 15, tzinfo=UTC), 13) == datetime(
        2024, 12, 15, tzinfo=UTC
    )


@pytest.mark.postgres
def test_an_event_racing_an_erasure_on_postgresql_waits_for_it_and_makes_a_new_lead(
    postgres_engine: Engine, clock: FrozenClock, tmp_path: Path
) -> None:
    _truncate(postgres_engine)
    app = outbox_app(postgres_engine, clock, tmp_path)
    with app.sessions.begin() as session:
        lead_id = track(session, app.rt, {"email": "race@x.test"}, "form_submitted").lead.id
    tracked: list[int] = []

    def event_meanwhile() -> None:
        with app.sessions.begin() as session:
            outcome = track(session, app.rt, {"email": "race@x.test"}, "page_viewed", {"n": 1})
            tracked.append(outcome.lead.id)

    with app.sessions.begin() as session:
        erase_lead(session, app.rt, lead_id, ErasureReason.REQUEST, "api")
        racing = threading.Thread(target=event_meanwhile)
        racing.start()
        time.sleep(0.5)
        assert racing.is_alive()  # it waits on the lead's row lock
    racing.join(30)

    assert tracked and tracked[0] != lead_id
    with app.sessions() as session:
        assert session.get_one(Lead, lead_id).email is None
        assert find_by_key(session, "race@x.test").id == tracked[0]
        on_tombstone = session.scalars(select(Event.type).where(Event.lead_id == lead_id)).all()
        assert on_tombstone == ["form_submitted"]
