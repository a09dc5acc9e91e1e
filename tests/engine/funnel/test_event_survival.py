"""Every recorded event survives: when scoring or the journey fails, the event stays stored,
marked failed with the error, and the scheduler retries it with backoff until it counts once."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from engine.app import App
from engine.clock import FrozenClock
from engine.errors import InvalidLeadError
from engine.funnel.service import backoff, reprocess, track
from engine.models import Enrolment, Event, EventStatus, Lead, LeadConflict, ScoreEntry
from engine.runner.actors import Tasks
from engine.runner.inline import run_due
from engine.runner.scheduler import claim_failed_events
from engine.workflow.runtime import Runtime
from tests.apps import outbox_app
from tests.engine.faults import MESSAGE, JourneyFault

ANA = {"email": "ana@northwind.test", "title": "VP Sales"}  # fit 10 with the test scoring
ERROR = f"RuntimeError: {MESSAGE}"


@pytest.fixture
def fault(monkeypatch: pytest.MonkeyPatch) -> JourneyFault:
    return JourneyFault(monkeypatch)


def _events(sessions: sessionmaker[Session]) -> list[Event]:
    with sessions() as s:
        return list(s.scalars(select(Event).order_by(Event.id)))


def _lead(sessions: sessionmaker[Session], email: str = "ana@northwind.test") -> Lead:
    with sessions() as s:
        return s.scalars(select(Lead).where(Lead.email == email)).one()


def _ledger(sessions: sessionmaker[Session]) -> list[tuple[str, float]]:
    with sessions() as s:
        return [(e.rule, e.points) for e in s.scalars(select(ScoreEntry).order_by(ScoreEntry.id))]


def _count(sessions: sessionmaker[Session], model: type[Any]) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _scored_once(sessions: sessionmaker[Session]) -> None:
    """Ana's form counted exactly once: 10 engagement, 10 fit, the ledger adds up, one enrolment."""
    lead = _lead(sessions)
    assert (lead.engagement, lead.fit, lead.stage) == (10, 10, "mql")
    assert sorted(_ledger(sessions)) == [("form", 10.0), ("senior", 10.0)]
    assert sum(points for _, points in _ledger(sessions)) == lead.score
    assert _count(sessions, Enrolment) == 1


# --- Storing never depends on processing -------------------------------------------------------


def test_an_event_whose_journey_fails_is_stored_failed_with_the_error_and_nothing_else_counts(
    sessions: sessionmaker[Session],
    rt: Runtime,
    clock: FrozenClock,
    fault: JourneyFault,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="engine.funnel.service"):
        with sessions.begin() as s:
            result = track(s, rt, ANA, "form_submitted", {"form": "demo"}, event_id="evt-1")
            assert result.failed == ERROR
            assert (result.points, result.due_enrolments, result.handoff_id) == (0, [], None)

    assert fault.calls == 1
    (event,) = _events(sessions)
    assert (event.type, event.idempotency_key, event.properties) == (
        "form_submitted",
        "evt-1",
        {"form": "demo"},
    )
    assert (event.status, event.attempts, event.error) == (EventStatus.FAILED, 1, ERROR)
    assert event.retry_at == clock.now() + timedelta(minutes=1)
    assert result.event_id == event.id
    lead = _lead(sessions)  # the lead and its attributes are stored with the event ...
    assert (lead.title, lead.stage) == ("VP Sales", "lead")
    assert (lead.engagement, lead.fit, lead.last_activity_at) == (0, 0, None)  # ... nothing else
    assert _ledger(sessions) == []
    assert _count(sessions, Enrolment) == 0
    (record,) = caplog.records
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert f"event {event.id} (form_submitted) of lead {lead.id}: processing failed" in (
        record.getMessage()
    )


def test_the_error_is_stored_on_one_line_however_the_exception_reads(
    sessions: sessionmaker[Session], rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> None:
        raise LookupError("step\n  'welcome'\x00 was removed " + "x" * 1000)

    monkeypatch.setattr("engine.funnel.service.evaluate_stage", broken)
    with sessions.begin() as s:
        result = track(s, rt, ANA, "form_submitted")

    (event,) = _events(sessions)
    assert event.error == result.failed
    assert event.error is not None
    assert event.error.startswith("LookupError: step 'welcome'\ufffd was removed xx")
    assert "\n" not in event.error and len(event.error) == 500


def test_a_duplicate_of_a_failed_event_counts_once_and_says_it_still_awaits_its_retry(
    sessions: sessionmaker[Session], rt: Runtime, fault: JourneyFault
) -> None:
    with sessions.begin() as s:
        first = track(s, rt, ANA, "form_submitted", event_id="evt-1")
    with sessions.begin() as s:
        again = track(s, rt, ANA, "form_submitted", event_id="evt-1")

    assert (again.duplicate, again.event_id, again.failed) == (True, first.event_id, ERROR)
    assert fault.calls == 1  # the duplicate ran nothing
    (event,) = _events(sessions)
    assert (event.status, event.attempts) == (EventStatus.FAILED, 1)


def test_an_event_for_lead_data_the_engine_refuses_stores_nothing_even_with_a_broken_journey(
    sessions: sessionmaker[Session], rt: Runtime, fault: JourneyFault
) -> None:
    with sessions.begin() as s:
        track(s, rt, {"email": "bo@initech.test", "phone": "+15005550001"}, "page_viewed")
    fault.calls = 0

    with pytest.raises(InvalidLeadError, match="phone"):
        with sessions.begin() as s:
            track(s, rt, {"email": "ana@northwind.test", "phone": "+1500"}, "form_submitted")

    assert [e.type for e in _events(sessions)] == ["page_viewed"]
    assert _count(sessions, Lead) == 1
    assert fault.calls == 0


def test_an_event_naming_another_leads_phone_is_kept_and_the_conflict_listed(
    sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        track(s, rt, {"email": "bo@initech.test", "phone": "+15005550001"}, "page_viewed")

    with sessions.begin() as s:
        track(s, rt, {"email": "ana@northwind.test", "phone": "+15005550001"}, "form_submitted")
    with sessions.begin() as s:
        track(s, rt, {"email": "ana@northwind.test", "phone": "+15005550001"}, "page_viewed")

    with sessions() as s:
        leads = {lead.email: lead for lead in s.scalars(select(Lead))}
        assert leads["ana@northwind.test"].phone is None  # the number stays with bo
        assert leads["bo@initech.test"].phone == "+15005550001"
        (conflict,) = s.scalars(select(LeadConflict))
        assert (conflict.lead_id, conflict.other_id) == (leads["ana@northwind.test"].id, 1)
        assert (conflict.field, conflict.value, conflict.times) == ("phone", "+15005550001", 2)
    assert sorted(e.type for e in _events(sessions)) == [
        "form_submitted",
        "page_viewed",
        "page_viewed",
    ]


def test_an_unsubscribe_is_honoured_at_once_even_when_its_processing_fails(
    sessions: sessionmaker[Session], rt: Runtime, fault: JourneyFault
) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "unsubscribed")

    assert _lead(sessions).email_consent is False
    assert [e.status for e in _events(sessions)] == [EventStatus.FAILED]


def test_a_retried_opt_out_never_turns_off_a_later_opt_in(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, fault: JourneyFault
) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "sms_opted_out")
    fault.on = False
    clock.advance(timedelta(seconds=30))
    with sessions.begin() as s:
        track(s, rt, ANA, "sms_opted_in")
    clock.advance(timedelta(minutes=1))

    run_due(sessions, rt)

    assert [e.status for e in _events(sessions)] == [EventStatus.PROCESSED] * 2
    assert _lead(sessions).sms_consent is True


# --- Retried by the scheduler with backoff -----------------------------------------------------


def test_run_due_retries_a_failed_event_once_the_fault_is_gone_and_it_counts_once(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, fault: JourneyFault
) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "form_submitted", event_id="evt-1")
    fault.on = False
    clock.advance(timedelta(seconds=59))
    run_due(sessions, rt)
    assert [e.status for e in _events(sessions)] == [EventStatus.FAILED]  # not due yet

    clock.advance(timedelta(seconds=1))
    run_due(sessions, rt)
    run_due(sessions, rt)
    with sessions.begin() as s:
        assert track(s, rt, ANA, "form_submitted", event_id="evt-1").duplicate

    (event,) = _events(sessions)
    assert (event.status, event.attempts, event.error, event.retry_at) == (
        EventStatus.PROCESSED,
        1,
        None,
        None,
    )
    _scored_once(sessions)
    with sessions() as s:
        (enrolment,) = s.scalars(select(Enrolment))
        assert (enrolment.sequence, enrolment.milestone) == ("drip", "consideration")


def test_each_failed_retry_waits_twice_as_long_up_to_six_hours(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, fault: JourneyFault
) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "form_submitted")
    waits = []
    for _ in range(4):
        (event,) = _events(sessions)
        assert event.retry_at is not None
        waits.append(event.retry_at - clock.now())
        clock.set(event.retry_at)
        run_due(sessions, rt)

    minute = timedelta(minutes=1)
    assert waits == [minute, 2 * minute, 4 * minute, 8 * minute]
    (event,) = _events(sessions)
    assert (event.status, event.attempts, event.error) == (EventStatus.FAILED, 5, ERROR)
    assert [backoff(n) for n in (1, 2, 9, 10, 500)] == [
        minute,
        2 * minute,
        256 * minute,
        timedelta(hours=6),
        timedelta(hours=6),
    ]
    assert _ledger(sessions) == []


def test_a_claimed_failed_event_is_leased_so_a_second_scheduler_does_not_take_it(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, fault: JourneyFault
) -> None:
    with sessions.begin() as s:
        track(s, rt, ANA, "form_submitted")
        track(s, rt, {"email": "bo@initech.test"}, "page_viewed")
    clock.advance(timedelta(minutes=1))
    lease = timedelta(minutes=5)

    with sessions.begin() as s:
        first = claim_failed_events(s, clock.now(), 1, lease)
        second = claim_failed_events(s, clock.now(), 10, lease)
        third = claim_failed_events(s, clock.now(), 10, lease)
    clock.advance(lease)
    with sessions.begin() as s:  # the retries never reported back: due again
        again = claim_failed_events(s, clock.now(), 10, lease)

    assert len(first) == len(second) == 1 and first != second
    assert third == []
    assert sorted(again) == sorted(first + second)


def test_reprocessing_an_event_someone_already_processed_changes_nothing(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, fault: JourneyFault
) -> None:
    with sessions.begin() as s:
        event_id = track(s, rt, ANA, "form_submitted").event_id
    assert event_id is not None
    fault.on = False
    with sessions.begin() as s:
        first = reprocess(s, rt, event_id)
    with sessions.begin() as s:  # a second retry whose lease ran out meanwhile
        second = reprocess(s, rt, event_id)
    with sessions.begin() as s:
        gone = reprocess(s, rt, event_id + 1000)

    assert first is not None and (first.duplicate, first.points, first.failed) == (False, 10, None)
    assert second is not None and (second.duplicate, second.points) == (True, 0)
    assert gone is None
    _scored_once(sessions)


def test_two_retries_of_one_event_at_once_count_it_once(
    db: Engine, sessions: sessionmaker[Session], rt: Runtime, fault: JourneyFault
) -> None:
    with sessions.begin() as s:
        event_id = track(s, rt, ANA, "form_submitted").event_id
    assert event_id is not None
    fault.on = False
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def retry() -> None:
        try:
            barrier.wait()
            with sessions.begin() as s:
                reprocess(s, rt, event_id)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=retry) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    _scored_once(sessions)


# --- The workers ------------------------------------------------------------------------------


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    """An App on the test database with the test workflows and the outbox for both channels."""
    return outbox_app(db, clock, tmp_path)


def _drain(broker: StubBroker, worker: dramatiq.Worker) -> None:
    for queue in ("events", "journeys", "sends"):
        broker.join(queue, timeout=10_000)
    worker.join()


def test_the_worker_stores_an_event_whose_processing_fails_without_raising_or_redelivering(
    nurture: App, fault: JourneyFault
) -> None:
    broker = StubBroker()
    tasks = Tasks(broker, nurture)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        tasks.process_events.send([{"lead": ANA, "type": "form_submitted", "id": "evt-1"}])
        _drain(broker, worker)  # a raising actor would be retried after a second: join waits
    finally:
        worker.stop()

    assert fault.calls == 1
    (event,) = _events(nurture.sessions)
    assert (event.idempotency_key, event.status, event.attempts) == ("evt-1", "failed", 1)


def test_tasks_tick_retries_a_failed_event_through_the_worker_and_it_counts_once(
    nurture: App, clock: FrozenClock, fault: JourneyFault
) -> None:
    with nurture.sessions.begin() as s:
        track(s, nurture.rt, ANA, "form_submitted")
    fault.on = False
    broker = StubBroker()
    tasks = Tasks(broker, nurture)
    assert tasks.tick() == 0  # its retry is not due for a minute
    clock.advance(timedelta(minutes=1))
    assert tasks.tick() == 1
    assert tasks.tick() == 0  # leased: a second scheduler pass does not enqueue it again

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        _drain(broker, worker)
    finally:
        worker.stop()

    (event,) = _events(nurture.sessions)
    assert (event.status, event.error, event.retry_at) == (EventStatus.PROCESSED, None, None)
    _scored_once(nurture.sessions)
    with nurture.sessions() as s:  # the follow-up advanced the enrolment the retry made
        (enrolment,) = s.scalars(select(Enrolment))
        assert enrolment.milestone == "consideration"
    assert tasks.tick() == 0
