"""Concurrency on real PostgreSQL (and Redis for the workers): two schedulers and four workers
on one database, the same event posted at once from many threads, and several events of one
lead recorded in parallel. Counts come out exact: one event per id, every point scored once,
one enrolment per sequence, one handoff per crossing, every delivery sent exactly once."""

from __future__ import annotations

import collections
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.orm import Session

from channels.base import EMAIL, SENT, SMS, Channel, SendResult
from engine.app import App
from engine.clock import FrozenClock
from engine.db import make_engine
from engine.funnel.service import track, upsert_lead
from engine.http.api import create_api
from engine.models import Delivery, Enrolment, Event, Handoff, Lead, ScoreEntry
from engine.runner.actors import Tasks
from engine.runner.scheduler import advance_enrolment
from engine.settings import QUEUES, Settings
from tests.conftest import POSTGRES_URL, START, _truncate

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "engine" / "fixtures" / "workflows"
FINAL = {"sent", "unknown", "failed", "skipped"}
KEY = "concurrency-key-0123456789-0123456789"


class Recorder(Channel):
    """A channel that keeps every message it is given, from any thread."""

    name = "recorder"

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._lock = threading.Lock()
        self.ids: collections.Counter[str] = collections.Counter()

    def send(self, message: Any) -> SendResult:
        with self._lock:
            self.ids[message.delivery_id] += 1
        return SendResult(self.name, f"rec-{message.delivery_id}", SENT)


def make_app(engine: Engine, clock: FrozenClock, channels: dict[str, Channel]) -> App:
    settings = Settings.from_env(
        {"NURTURE_WORKFLOWS": str(FIXTURES), "NURTURE_TEMPLATES": str(ROOT / "templates")}
    )
    return App.create(
        settings, clock=clock, environ={}, channels=channels, engine=engine, paced=False
    )


def in_parallel(count: int, work: Callable[[int], object]) -> list[object]:
    """Run work(0..count-1) in threads released together; results in order, errors raised."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = work(index)
        except BaseException as error:  # noqa: BLE001 - re-raised below with the others
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


@pytest.fixture
def wide(postgres_engine: Engine) -> Iterator[Engine]:
    """The emptied test database through an engine with a connection for every thread."""
    _truncate(postgres_engine)
    engine = make_engine(POSTGRES_URL, pool_size=30, max_overflow=10)
    yield engine
    engine.dispose()


@pytest.fixture
def app(wide: Engine) -> App:
    return make_app(wide, FrozenClock(START), {EMAIL: Recorder(EMAIL), SMS: Recorder(SMS)})


def _lead(s: Session, email: str) -> Lead:
    return s.scalars(select(Lead).where(Lead.email == email)).one()


def _ledger(s: Session, lead: Lead) -> list[str]:
    return sorted(s.scalars(select(ScoreEntry.rule).where(ScoreEntry.lead_id == lead.id)))


# --- The same event many times at once ----------------------------------------------------------


def test_the_same_event_posted_ten_times_at_once_to_the_api_is_one_event_and_one_score_entry(
    app: App,
) -> None:
    api = create_api(app, None, api_keys=[KEY], environ={})
    headers = {"Authorization": f"Bearer {KEY}"}
    rounds = [  # a new lead first, then a lead that exists
        ("form_submitted", "form-1", ["form"], 10, "lead"),
        ("demo_requested", "demo-1", ["demo", "form"], 40, "mql"),
    ]
    for event_type, event_id, ledger, engagement, stage in rounds:
        body = {"id": event_id, "lead": {"email": "ten@times.test"}, "type": event_type}

        def post(_: int, body: dict[str, Any] = body) -> object:
            with TestClient(api, headers=headers) as client:
                response = client.post("/v1/events", json=body)
            assert response.status_code == 200, response.text
            return response.json()

        answers: list[Any] = in_parallel(10, post)
        assert sorted(a["duplicate"] for a in answers) == [False] + [True] * 9
        assert len({a["event_id"] for a in answers}) == 1  # duplicates name the stored event
        assert len({a["lead_id"] for a in answers}) == 1
        with app.sessions() as s:
            lead = _lead(s, "ten@times.test")
            assert s.scalar(select(func.count()).where(Event.idempotency_key == event_id)) == 1
            assert _ledger(s, lead) == ledger  # one score entry for ten posts
            assert (lead.engagement, lead.stage) == (engagement, stage)
            assert s.scalar(select(func.count()).select_from(Lead)) == 1
            assert s.scalar(select(func.count()).select_from(Enrolment)) == 1


# --- Several events of one lead at once ---------------------------------------------------------


def _warm(app: App, email: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    lead = {"email": email, "title": "VP Engineering"}  # fit 10
    with app.sessions.begin() as s:
        for event_type, properties in events:
            track(s, app.rt, lead, event_type, properties)


FORM, DOWNLOAD, CLICK = ("form_submitted", {}), ("content_downloaded", {}), ("email_clicked", {})


@pytest.mark.parametrize(
    ("warm", "pair", "engagement"),
    [
        # 28 points: a demo request alone crosses SQL (score >= 50, fit >= 10), the click after it
        ([FORM, DOWNLOAD], ("demo_requested", "email_clicked"), 54),
        # 40 points: neither the click (46) nor the pricing view (47) crosses alone; together 53
        ([FORM, DOWNLOAD, CLICK, CLICK], ("email_clicked", "page_viewed"), 43),
    ],
    ids=["either-crosses", "only-both-cross"],
)
def test_two_events_of_one_lead_in_parallel_are_both_scored_and_cross_sql_once(
    app: App, warm: list[tuple[str, dict[str, Any]]], pair: tuple[str, str], engagement: int
) -> None:
    emails = [f"pair{i}@parallel.test" for i in range(10)]
    for email in emails:
        _warm(app, email, warm)

    def record(index: int) -> object:
        email, event_type = emails[index // 2], pair[index % 2]
        properties = {"url": "/pricing"} if event_type == "page_viewed" else {}
        with app.sessions.begin() as s:
            return track(s, app.rt, {"email": email}, event_type, properties, event_id=f"e{index}")

    in_parallel(2 * len(emails), record)  # twenty threads: ten leads, two events each

    with app.sessions() as s:
        for email in emails:
            lead = _lead(s, email)
            assert (lead.engagement, lead.fit, lead.stage) == (engagement, 10, "sql"), email
            scored = [r for r in _ledger(s, lead) if r not in ("form", "download", "senior")]
            rules = {"demo_requested": "demo", "email_clicked": "click", "page_viewed": "pricing"}
            expected = [rules[p] for p in pair] + [rules[e] for e, _ in warm[2:]]
            assert scored == sorted(expected), email
            handoffs = s.scalars(select(Handoff).where(Handoff.lead_id == lead.id)).all()
            assert [h.crossing for h in handoffs] == [1], email
            assert lead.sql_crossings == 1
            exits = s.scalars(select(Enrolment.exit_reason).where(Enrolment.lead_id == lead.id))
            assert list(exits) == ["sql"]


def test_an_attribute_change_and_an_event_that_cross_sql_only_together_make_one_handoff(
    app: App,
) -> None:
    emails = [f"fit{i}@parallel.test" for i in range(10)]
    with app.sessions.begin() as s:
        for email in emails:  # 18 points, fit 0
            track(s, app.rt, {"email": email}, "form_submitted")
            track(s, app.rt, {"email": email}, "content_downloaded")

    def change(index: int) -> object:
        email = emails[index // 2]
        with app.sessions.begin() as s:
            if index % 2:  # the title alone: fit 10, 28 points
                return upsert_lead(s, app.rt, {"email": email, "title": "Director of IT"}).lead_id
            return track(s, app.rt, {"email": email}, "demo_requested").lead_id  # 48, fit 0

    in_parallel(2 * len(emails), change)

    with app.sessions() as s:
        for email in emails:
            lead = _lead(s, email)
            assert (lead.score, lead.fit, lead.stage) == (58, 10, "sql"), email
            assert _ledger(s, lead) == ["demo", "download", "form", "senior"]
            handoffs = s.scalars(select(Handoff).where(Handoff.lead_id == lead.id)).all()
            assert len(handoffs) == 1, email


def test_two_first_events_of_a_new_lead_at_once_make_one_lead_one_enrolment_both_scored(
    app: App,
) -> None:
    emails = [f"new{i}@parallel.test" for i in range(10)]

    def record(index: int) -> object:
        event_type = ("form_submitted", "content_downloaded")[index % 2]
        with app.sessions.begin() as s:
            return track(s, app.rt, {"email": emails[index // 2]}, event_type)

    in_parallel(2 * len(emails), record)

    with app.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Lead)) == len(emails)
        for email in emails:
            lead = _lead(s, email)
            assert (lead.engagement, lead.stage) == (18, "lead"), email
            assert _ledger(s, lead) == ["download", "form"]
            enrolments = s.scalars(select(Enrolment).where(Enrolment.lead_id == lead.id)).all()
            assert [e.sequence for e in enrolments] == ["drip"], email  # both events enrol


def test_limits_hold_when_many_events_of_one_rule_arrive_at_once(app: App) -> None:
    with app.sessions.begin() as s:
        track(s, app.rt, {"email": "cap@parallel.test"}, "form_submitted")

    def record(index: int) -> object:
        if index % 2:  # limit: once ever
            event_type, properties = "newsletter_subscribed", {}
        else:  # limit: once per day
            event_type, properties = "page_viewed", {"url": f"/pricing?v={index}"}
        with app.sessions.begin() as s:
            lead = {"email": "cap@parallel.test"}
            return track(s, app.rt, lead, event_type, properties, event_id=f"cap-{index}")

    in_parallel(16, record)

    with app.sessions() as s:
        lead = _lead(s, "cap@parallel.test")
        assert _ledger(s, lead) == ["form", "newsletter", "pricing"]
        assert (lead.engagement, lead.stage) == (10 + 5 + 7, "mql")
        assert s.scalar(select(func.count()).select_from(Event)) == 17


def test_an_event_and_an_enrolment_step_of_one_lead_at_the_same_moment_do_not_deadlock(
    wide: Engine,
) -> None:
    """A worker advancing an enrolment while an event for its lead changes that enrolment:
    both finish, in either order, without PostgreSQL having to break a deadlock."""
    clock = FrozenClock(START)
    channels: dict[str, Channel] = {EMAIL: Recorder(EMAIL), SMS: Recorder(SMS)}
    events_engine = make_engine(POSTGRES_URL, connect_args={"application_name": "nurture-event"})
    steps_engine = make_engine(POSTGRES_URL)
    api_side, worker_side = (
        make_app(events_engine, clock, channels),
        make_app(steps_engine, clock, channels),
    )
    lead = {"email": "race@lock.test"}
    with api_side.sessions.begin() as s:
        (enrolment_id,) = track(s, api_side.rt, lead, "form_submitted").due_enrolments
    planning, go = threading.Event(), threading.Event()

    def pause(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO deliveries"):  # the step is about to plan a send
            planning.set()
            go.wait(10)

    event.listen(steps_engine, "before_cursor_execute", pause)
    errors: list[BaseException] = []

    def attempt(work: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as error:  # noqa: BLE001 - asserted below
                errors.append(error)

        return run

    def step() -> None:
        with worker_side.sessions.begin() as s:
            advance_enrolment(s, worker_side.rt, enrolment_id)

    def unsubscribe() -> None:  # the drip's exit rule ends the enrolment being advanced
        with api_side.sessions.begin() as s:
            track(s, api_side.rt, lead, "unsubscribed")

    waiting = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = 'nurture-event' AND wait_event_type = 'Lock'"
    )
    stepper = threading.Thread(target=attempt(step))
    stepper.start()
    try:
        assert planning.wait(10), "the step never planned its send"
        tracker = threading.Thread(target=attempt(unsubscribe))
        tracker.start()
        with wide.connect() as observer:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not observer.scalar(waiting):
                observer.rollback()  # pg_stat_activity is a snapshot per transaction
                time.sleep(0.01)
        go.set()
        stepper.join(30)
        tracker.join(30)
    finally:
        go.set()
        events_engine.dispose()
        steps_engine.dispose()

    assert errors == []
    with Session(wide) as s:
        enrolment = s.get_one(Enrolment, enrolment_id)
        assert (enrolment.status, enrolment.exit_reason) == ("exited", "exit_when: unsubscribed")
        planned = s.scalars(select(Delivery).where(Delivery.enrolment_id == enrolment_id)).all()
        assert [(d.template, d.status) for d in planned] == [("welcome", "skipped")]
        assert _lead(s, "race@lock.test").email_consent is False


# --- Two schedulers and four workers -------------------------------------------------------------


class Spy:
    """Stands in for an actor in a scheduler's Tasks, keeping what the scheduler enqueued."""

    def __init__(self, actor: Any, log: list[Any]) -> None:
        self.actor, self.log = actor, log

    def send(self, *args: Any) -> Any:
        self.log.extend(args[0])
        return self.actor.send(*args)


class Process:
    """One scheduler or worker process: its own engine, App and broker connection."""

    def __init__(
        self, redis_url: str, namespace: str, clock: FrozenClock, channels: dict[str, Channel]
    ) -> None:
        self.engine = make_engine(POSTGRES_URL, pool_size=4)
        self.app = make_app(self.engine, clock, channels)
        self.broker = RedisBroker(url=redis_url, namespace=namespace)
        self.tasks = Tasks(self.broker, self.app, lease=timedelta(minutes=5))
        self.worker: dramatiq.Worker | None = None
        self.claimed: list[Any] = []

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.broker.close()
        self.engine.dispose()


def test_two_schedulers_and_four_workers_send_every_delivery_of_a_population_exactly_once(
    postgres_engine: Engine, redis_url: str
) -> None:
    _truncate(postgres_engine)
    clock = FrozenClock(START)
    namespace = f"nurture-conc-{uuid.uuid4().hex[:8]}"
    emails, sms = Recorder(EMAIL), Recorder(SMS)
    channels: dict[str, Channel] = {EMAIL: emails, SMS: sms}
    texters = [f"sms{i}@crowd.test" for i in range(24)]  # phone and SMS opt-in
    mailers = [f"mail{i}@crowd.test" for i in range(24)]  # email only: the SMS step is skipped
    vips = [f"vip{i}@crowd.test" for i in range(8)]  # cross SQL with their two events
    schedulers = [Process(redis_url, namespace, clock, channels) for _ in range(2)]
    workers = [Process(redis_url, namespace, clock, channels) for _ in range(4)]
    stop = threading.Event()
    phase = [0]
    ticking = [threading.Lock() for _ in schedulers]  # held by a scheduler while it ticks

    def schedule(process: Process, lock: threading.Lock) -> None:
        while not stop.is_set():
            with lock:
                process.tasks.tick(batch=5)
            stop.wait(0.01)

    def next_phase(delta: timedelta) -> list[int]:
        """Move the clock while no scheduler is mid-tick; how much each had claimed before."""
        for lock in ticking:
            lock.acquire()
        try:
            phase[0] += 1
            clock.advance(delta)
            return [len(p.claimed) for p in schedulers]
        finally:
            for lock in ticking:
                lock.release()

    for process in schedulers:
        spy = Spy(process.tasks.advance_enrolments, process.claimed)
        process.tasks.advance_enrolments = spy  # type: ignore[assignment]
    threads = [
        threading.Thread(target=schedule, args=(p, lock), daemon=True)
        for p, lock in zip(schedulers, ticking, strict=True)
    ]

    def settle(expected: dict[str, int]) -> dict[str, int]:
        """Wait until the population's deliveries reach `expected` counts by status."""
        deadline = time.monotonic() + 30
        while True:
            with Session(postgres_engine) as s:
                counts = dict(
                    s.execute(
                        select(Delivery.status, func.count())
                        .join(Lead, Lead.id == Delivery.lead_id)
                        .where(Lead.email.not_like("vip%"))
                        .group_by(Delivery.status)
                    ).all()
                )
                vip_open = s.scalar(
                    select(func.count())
                    .select_from(Delivery)
                    .where(Delivery.status.in_(("planned", "sending")))
                )
                events = s.scalar(select(func.count()).select_from(Event))
                handoffs = s.scalar(select(func.count()).select_from(Handoff))
            if counts == expected and not vip_open and (events, handoffs) == (2 * 56, 8):
                return counts
            if time.monotonic() > deadline:
                raise AssertionError(f"phase {phase[0]} did not settle: {counts}")
            time.sleep(0.05)

    try:
        for process in workers:
            process.worker = dramatiq.Worker(process.broker, worker_threads=2, worker_timeout=50)
            process.worker.start()
        for thread in threads:
            thread.start()
        ingest = schedulers[0].tasks.process_events
        for n, email in enumerate(texters + mailers + vips):
            lead: dict[str, Any] = {"email": email}
            if email in texters:
                lead |= {"phone": f"+1500555{n:04d}", "sms_consent": True}
            if email in vips:
                lead |= {"title": "VP Sales"}
            second = "demo_requested" if email in vips else "content_downloaded"
            for event_type, event_id in (
                ("form_submitted", f"form-{n}"),
                (second, f"second-{n}"),
                ("form_submitted", f"form-{n}"),  # a client retry: the same event again
            ):
                ingest.send([{"lead": lead, "type": event_type, "id": event_id, "properties": {}}])

        settle({"sent": 48})  # the welcome email, at once
        claimed_before = next_phase(timedelta(days=2))
        settle({"sent": 96})  # the case study after the two-day wait
        claimed_after = next_phase(timedelta(days=3))
        settle({"sent": 120, "skipped": 24})  # the SMS question: sent to opt-ins only
        for process in workers:  # let any duplicate message still queued run out
            for queue in QUEUES:
                process.broker.join(queue, timeout=30_000)
            assert process.worker is not None
            process.worker.join()
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for process in schedulers + workers:
            process.close()
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{namespace}*"):
            client.delete(key)
        client.close()

    # Each enrolment due after the wait was claimed by one scheduler, and both took a share.
    in_phase = [
        p.claimed[start:end]
        for p, start, end in zip(schedulers, claimed_before, claimed_after, strict=True)
    ]
    first, second = (set(claims) for claims in in_phase)
    assert first and second and not first & second
    assert len(first | second) == sum(len(c) for c in in_phase) == 48
    assert max(emails.ids.values()) == 1 and max(sms.ids.values()) == 1  # nothing twice
    with Session(postgres_engine) as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 2 * 56
        deliveries = s.scalars(select(Delivery)).all()
        sent = collections.Counter((d.channel, d.status) for d in deliveries)
        leads = {lead.email: lead for lead in s.scalars(select(Lead))}
        handoffs = s.scalars(select(Handoff)).all()
        enrolments = collections.Counter(e.lead_id for e in s.scalars(select(Enrolment)))
    assert {d.status for d in deliveries} <= FINAL
    assert sum(emails.ids.values()) == sent[("email", "sent")]
    assert sum(sms.ids.values()) == sent[("sms", "sent")] == 24
    assert {d.id for d in deliveries if d.status == "sent"} == set(emails.ids) | set(sms.ids)
    for email in texters + mailers:
        assert (leads[email].engagement, enrolments[leads[email].id]) == (18, 1), email
    assert sorted(h.lead_id for h in handoffs) == sorted(leads[e].id for e in vips)
    assert {leads[e].stage for e in vips} == {"sql"}
