"""Faults on real PostgreSQL (and Redis): the database connection dropped in the middle of a
transaction, at every statement in turn, and a provider that hangs. Afterwards each event,
enrolment step, send and handoff is recorded whole or not at all, a retry records it exactly
once, every delivery ends in a final state and none is sent twice."""

from __future__ import annotations

import collections
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from channels.base import EMAIL, SENT, SMS, Channel, EmailMessage, SendResult, SmsMessage
from channels.sendgrid import SendGridChannel
from engine.app import App
from engine.clock import FrozenClock
from engine.db import make_engine
from engine.delivery.handoff import deliver_handoff
from engine.delivery.sending import expire_stuck, send_delivery
from engine.funnel.service import track, upsert_lead
from engine.models import Base, Delivery, Enrolment, Event, Handoff, Lead, ScoreEntry
from engine.runner.actors import Tasks
from engine.runner.inline import run_due
from engine.runner.scheduler import advance_enrolment
from engine.settings import QUEUES, Settings
from tests.channels.servers import Reply, Request, SendGridServer
from tests.conftest import POSTGRES_URL, START, _truncate
from tests.crm import CrmReceiver

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "engine" / "fixtures" / "workflows"
FINAL = {"sent", "unknown", "failed", "skipped"}
VP = {"title": "VP Engineering"}  # fit 10 with the test scoring


# --- Helpers -----------------------------------------------------------------------------------


class Recorder(Channel):
    """A channel that keeps every message it is given, from any thread."""

    name = "recorder"

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._lock = threading.Lock()
        self.messages: list[EmailMessage | SmsMessage] = []

    def send(self, message: Any) -> SendResult:
        with self._lock:
            self.messages.append(message)
        return SendResult(self.name, f"rec-{message.delivery_id}", SENT)

    def ids(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(m.delivery_id for m in self.messages)


class Saboteur:
    """Terminates the PostgreSQL backend of the connection about to run the n-th statement.

    Statements are counted from `arm`; COMMIT counts as a statement too, so the last cut
    lands between the final write and the commit.
    """

    def __init__(self, engine: Engine, admin: Engine) -> None:
        self.admin = admin
        self.at = 0
        self.seen = 0
        self.fired = False
        self.where = ""
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def arm(self, at: int) -> None:
        self.at, self.seen, self.fired, self.where = at, 0, False, ""

    def disarm(self) -> None:
        self.at = 0

    def _statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self._step(conn, statement)

    def _commit(self, conn: Any) -> None:
        self._step(conn, "COMMIT")

    def _step(self, conn: Any, statement: str) -> None:
        if not self.at or self.fired:
            return
        self.seen += 1
        if self.seen == self.at:
            self.fired = True
            self.where = " ".join(statement.split())[:80]
            pid = conn.connection.dbapi_connection.info.backend_pid
            alive = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p")
            with self.admin.connect() as admin:
                assert admin.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    admin.rollback()  # pg_stat_activity is a snapshot per transaction
                    if not admin.scalar(alive, {"p": pid}):
                        break  # the backend has really gone
                    time.sleep(0.001)
                else:
                    pytest.fail(f"backend {pid} survived pg_terminate_backend")


def interrupted(saboteur: Saboteur, at: int, work: Callable[[], object]) -> bool:
    """Run `work` with its connection killed at statement `at`; False when `work` ran fewer
    statements than that (it then completed normally)."""
    saboteur.arm(at)
    try:
        work()
    except DBAPIError:
        assert saboteur.fired, "a database error nobody injected"
        return True
    finally:
        saboteur.disarm()
    assert not saboteur.fired, f"the dropped connection at {saboteur.where!r} went unnoticed"
    return False


def dump(engine: Engine) -> dict[str, tuple[int, str]]:
    """A digest of every row of every table, so 'nothing changed' can be checked exactly."""
    digests = " UNION ALL ".join(
        f"SELECT '{t.name}', count(*), md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), ''))"
        f" FROM {t.name} r"
        for t in Base.metadata.sorted_tables
    )
    with engine.connect() as connection:
        return {name: (rows, digest) for name, rows, digest in connection.execute(text(digests))}


def count(engine: Engine, model: type[Any], *where: Any) -> int:
    with Session(engine) as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def make_app(
    engine: Engine,
    clock: FrozenClock,
    channels: dict[str, Any] | None = None,
    workflows: Path = FIXTURES,
    environ: dict[str, str] | None = None,
) -> App:
    settings = Settings.from_env(
        {"NURTURE_WORKFLOWS": str(workflows), "NURTURE_TEMPLATES": str(ROOT / "templates")}
    )
    channels = channels or {EMAIL: Recorder(EMAIL), SMS: Recorder(SMS)}
    return App.create(
        settings,
        clock=clock,
        environ=environ or {},
        channels=channels,
        engine=engine,
        paced=False,
    )


def send(app: App, delivery_id: str) -> str:
    return send_delivery(app, delivery_id)


@pytest.fixture
def faulty(postgres_engine: Engine) -> Iterator[Engine]:
    """An engine of its own on the emptied test database, whose backends the tests kill."""
    _truncate(postgres_engine)
    engine = make_engine(POSTGRES_URL, connect_args={"application_name": "nurture-faulty"})
    yield engine
    engine.dispose()


@pytest.fixture
def local_network(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


# --- A connection dropped at every statement of a transaction ----------------------------------


def test_an_event_cut_off_at_any_statement_is_recorded_whole_or_not_at_all_then_once(
    faulty: Engine, postgres_engine: Engine
) -> None:
    clock = FrozenClock(START)
    app = make_app(faulty, clock)
    saboteur = Saboteur(faulty, postgres_engine)

    at = 0
    while True:
        at += 1
        email, key = f"cut{at}@drop.test", f"form-{at}"

        def record(email: str = email, key: str = key) -> Any:
            with app.sessions.begin() as s:
                return track(s, app.rt, {"email": email, **VP}, "form_submitted", event_id=key)

        before = dump(postgres_engine)
        if not interrupted(saboteur, at, record):
            break
        assert dump(postgres_engine) == before, f"half an event stayed (cut at {saboteur.where})"
        assert not record().duplicate  # the retry records it ...
        assert record().duplicate  # ... once
        with Session(postgres_engine) as s:
            lead = s.scalars(select(Lead).where(Lead.email == email)).one()
            assert (lead.stage, lead.engagement, lead.fit) == ("mql", 10, 10)  # 20: MQL
            ledger = s.scalars(select(ScoreEntry.rule).where(ScoreEntry.lead_id == lead.id))
            assert sorted(ledger) == ["form", "senior"]
            assert count(postgres_engine, Event, Event.lead_id == lead.id) == 1
            assert count(postgres_engine, Enrolment, Enrolment.lead_id == lead.id) == 1
    assert at > 10, "the transaction should have had many statements to cut"


def _warm(app: App, email: str) -> None:
    """47 points (fit 10, engagement 37): the next click crosses SQL (score >= 50, fit >= 10)."""
    lead = {"email": email, **VP}
    with app.sessions.begin() as s:
        upsert_lead(s, app.rt, lead)
        for event_type in ("form_submitted", "content_downloaded", "email_clicked"):
            track(s, app.rt, lead, event_type)
        track(s, app.rt, lead, "email_clicked")
        track(s, app.rt, lead, "page_viewed", {"url": "/pricing"})


def test_a_crossing_cut_off_at_any_statement_makes_no_handoff_and_the_retry_makes_one(
    faulty: Engine, postgres_engine: Engine
) -> None:
    clock = FrozenClock(START)
    app = make_app(faulty, clock)
    saboteur = Saboteur(faulty, postgres_engine)

    at = 0
    while True:
        at += 1
        email, key = f"sql{at}@drop.test", f"click-{at}"
        _warm(app, email)

        def cross(email: str = email, key: str = key) -> Any:
            with app.sessions.begin() as s:
                return track(s, app.rt, {"email": email}, "email_clicked", event_id=key)

        before = dump(postgres_engine)
        if not interrupted(saboteur, at, cross):
            break
        assert dump(postgres_engine) == before, f"half a crossing stayed (cut at {saboteur.where})"
        result = cross()
        assert result.stage == "sql" and result.handoff_id is not None
        assert cross().duplicate
        with Session(postgres_engine) as s:
            lead = s.scalars(select(Lead).where(Lead.email == email)).one()
            assert (lead.stage, lead.score, lead.sql_crossings) == ("sql", 53, 1)
            handoffs = s.scalars(select(Handoff).where(Handoff.lead_id == lead.id)).all()
            assert [h.id for h in handoffs] == [result.handoff_id]
            exits = s.scalars(select(Enrolment.exit_reason).where(Enrolment.lead_id == lead.id))
            assert list(exits) == ["sql"]
    assert at > 10


def test_an_enrolment_step_cut_off_at_any_statement_plans_nothing_and_the_retry_plans_once(
    faulty: Engine, postgres_engine: Engine
) -> None:
    clock = FrozenClock(START)
    app = make_app(faulty, clock)
    saboteur = Saboteur(faulty, postgres_engine)
    with app.sessions.begin() as s:
        enrolments = [
            track(s, app.rt, {"email": f"step{i}@drop.test"}, "form_submitted").due_enrolments[0]
            for i in range(60)
        ]

    at = 0
    for enrolment_id in enrolments:
        at += 1

        def step(enrolment_id: int = enrolment_id) -> list[str]:
            with app.sessions.begin() as s:
                return advance_enrolment(s, app.rt, enrolment_id)

        before = dump(postgres_engine)
        if not interrupted(saboteur, at, step):
            break
        assert dump(postgres_engine) == before, f"half a step stayed (cut at {saboteur.where})"
        assert len(step()) == 1  # the welcome email, planned by the retry ...
        assert step() == []  # ... and by nothing after it: the wait is not over
        assert count(postgres_engine, Delivery, Delivery.enrolment_id == enrolment_id) == 1
    else:
        pytest.fail("advancing an enrolment should need fewer than 60 statements")
    assert at > 3


def test_a_send_cut_off_before_the_provider_call_is_sent_once_and_after_it_never_again(
    faulty: Engine, postgres_engine: Engine
) -> None:
    clock = FrozenClock(START)
    app = make_app(faulty, clock)
    recorder: Recorder = app.channels[EMAIL]
    saboteur = Saboteur(faulty, postgres_engine)
    with app.sessions.begin() as s:
        for i in range(40):
            track(s, app.rt, {"email": f"send{i}@drop.test"}, "form_submitted")
    run_due(app.sessions, app.rt)
    with app.sessions() as s:
        planned = list(s.scalars(select(Delivery.id).where(Delivery.status == "planned")))
    assert len(planned) == 40

    cut_before = cut_after = 0
    for at, delivery_id in enumerate(planned, start=1):
        before = dump(postgres_engine)
        if not interrupted(saboteur, at, lambda d=delivery_id: send(app, d)):
            break
        with Session(postgres_engine) as s:
            delivery = s.get_one(Delivery, delivery_id)
        if recorder.ids()[delivery_id] == 0:  # cut in the transaction that marks `sending`
            cut_before += 1
            assert dump(postgres_engine) == before, f"cut at {saboteur.where}"
            assert send(app, delivery_id) == "sent"
        else:  # the provider has it; the cut lost the `sent` mark
            cut_after += 1
            assert (delivery.status, delivery.attempts) == ("sending", 1)
            assert send(app, delivery_id) == "not sent"  # a retry never resends `sending`
            clock.advance(app.rt.send.lease + timedelta(seconds=1))
            with app.sessions.begin() as s:
                assert expire_stuck(s, clock.now()) == 1
            assert send(app, delivery_id) == "not sent"
        with Session(postgres_engine) as s:
            delivery = s.get_one(Delivery, delivery_id)
        assert delivery.status in ("sent", "unknown")
        assert recorder.ids()[delivery_id] == 1, f"cut at {saboteur.where}"
    else:
        pytest.fail("sending should need fewer than 40 statements")
    assert cut_before >= 3 and cut_after >= 1, (cut_before, cut_after)
    assert max(recorder.ids().values()) == 1


def test_a_handoff_cut_off_around_the_crm_call_is_delivered_with_one_idempotency_key(
    faulty: Engine, postgres_engine: Engine, local_network: None
) -> None:
    clock = FrozenClock(START)
    saboteur = Saboteur(faulty, postgres_engine)
    with CrmReceiver() as crm:
        environ = {
            "NURTURE_CRM_WEBHOOK_URL": crm.endpoint,
            "NURTURE_CRM_WEBHOOK_SECRET": crm.secret,
        }
        app = make_app(faulty, clock, environ=environ)
        handoffs = []
        for i in range(30):
            _warm(app, f"crm{i}@drop.test")
            with app.sessions.begin() as s:
                handoff_id = track(s, app.rt, {"email": f"crm{i}@drop.test"}, "email_clicked")
                handoffs.append(handoff_id.handoff_id)

        def deliver(handoff_id: int) -> str:
            return deliver_handoff(app.sessions, app.rt, app.crm, handoff_id)

        cut_after = 0
        for at, handoff_id in enumerate(handoffs, start=1):
            assert handoff_id is not None
            posted = len(crm.received)
            before = dump(postgres_engine)
            if not interrupted(saboteur, at, lambda h=handoff_id: deliver(h)):
                break
            if len(crm.received) == posted:
                assert dump(postgres_engine) == before, f"cut at {saboteur.where}"
            else:
                cut_after += 1  # the CRM has it, the database does not know yet
            assert deliver(handoff_id) == "delivered"
            assert deliver(handoff_id) == "delivered"  # and is never posted again
            with Session(postgres_engine) as s:
                handoff = s.get_one(Handoff, handoff_id)
            assert (handoff.status, handoff.attempts) == ("delivered", 1)
        else:
            pytest.fail("delivering a handoff should need fewer than 30 statements")
    assert cut_after >= 1
    keys = collections.Counter(crm.keys)
    delivered = {f"handoff-{h}" for h in handoffs[:at]}
    assert delivered <= set(keys)  # none lost
    assert len(crm.received) - len(set(crm.keys)) == cut_after  # repeats: only the cut ones
    assert all(key.startswith("handoff-") for key in keys)
    assert count(postgres_engine, Handoff) == 30


# --- A provider that hangs ---------------------------------------------------------------------


@pytest.fixture
def short_lease(tmp_path: Path) -> Path:
    """The test workflows with a one-minute send timeout and quick retries."""
    folder = tmp_path / "workflows"
    folder.mkdir()
    for path in FIXTURES.glob("*.yml"):
        (folder / path.name).write_text(path.read_text())
    (folder / "sending.yml").write_text(
        "send_timeout: 1m\nretries: {max_attempts: 3, backoff: 10s}\n"
    )
    return folder


class HangingSendGrid(SendGridServer):
    """Takes the message, then keeps the caller waiting before it answers 202."""

    def __init__(self, hang: float) -> None:
        super().__init__()
        self.hang = hang

    def handle(self, request: Request) -> Reply:
        return replace(super().handle(request), delay=self.hang)


def _planned_welcome(app: App) -> str:
    with app.sessions.begin() as s:
        track(s, app.rt, {"email": "slow@provider.test", "first_name": "Sal"}, "form_submitted")
    run_due(app.sessions, app.rt)
    with app.sessions() as s:
        return s.scalars(select(Delivery.id)).one()


def test_a_provider_that_hangs_past_the_client_timeout_leaves_the_send_unknown_and_sends_once(
    faulty: Engine, short_lease: Path, local_network: None
) -> None:
    clock = FrozenClock(START)
    with SendGridServer() as server:
        channel = SendGridChannel("SG.test-key", host=server.url, timeout=0.3, clock=clock)
        app = make_app(faulty, clock, {EMAIL: channel, SMS: Recorder(SMS)}, short_lease)
        delivery_id = _planned_welcome(app)
        server.then(Reply(202, delay=1.0))  # answers long after the client gave up

        # The request arrived whole: SendGrid may have taken it, so it is never sent again.
        assert send(app, delivery_id) == "unknown"
        for _ in range(3):
            clock.advance(timedelta(seconds=10))
            assert send(app, delivery_id) == "not sent"

    assert len(server.requests) == 1
    ids = {json.loads(r.body)["custom_args"]["delivery_id"] for r in server.requests}
    assert ids == {delivery_id}
    with app.sessions() as s:
        delivery = s.get_one(Delivery, delivery_id)
    assert (delivery.status, delivery.attempts) == ("unknown", 1)


@pytest.mark.parametrize(
    ("client_timeout", "final"),
    [(0.5, "unknown"), (5.0, "sent")],
    ids=["client-gives-up", "late-202"],
)
def test_a_provider_that_hangs_past_send_timeout_leaves_the_send_final_and_never_resends_it(
    faulty: Engine, short_lease: Path, local_network: None, client_timeout: float, final: str
) -> None:
    clock = FrozenClock(START)
    with HangingSendGrid(hang=1.5) as server:
        channel = SendGridChannel(
            "SG.test-key", host=server.url, timeout=client_timeout, clock=clock
        )
        app = make_app(faulty, clock, {EMAIL: channel, SMS: Recorder(SMS)}, short_lease)
        delivery_id = _planned_welcome(app)
        outcome: list[str] = []
        worker = threading.Thread(target=lambda: outcome.append(send(app, delivery_id)))
        worker.start()
        deadline = time.monotonic() + 5
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.requests, "the send never reached the provider"
        clock.advance(timedelta(minutes=1, seconds=1))  # send_timeout passes mid-call
        with app.sessions.begin() as s:
            assert expire_stuck(s, clock.now()) == 1  # the scheduler's sweep
        worker.join(10)
        assert outcome, "the send did not return"
        for _ in range(3):  # retries and scheduler passes later on: nothing is resent
            clock.advance(timedelta(minutes=5))
            assert send(app, delivery_id) == "not sent"

    assert len(server.requests) == 1 and len(server.accepted) == 1
    with app.sessions() as s:
        delivery = s.get_one(Delivery, delivery_id)
    # `unknown` is final unless an answer settles it: the late 202 does. Never planned again.
    assert delivery.status == final, (delivery.status, delivery.detail)
    assert delivery.attempts == 1
    if final == "sent":
        assert delivery.provider_message_id == server.message_ids[0]


# --- Random dropped connections under the real pipeline ----------------------------------------


def test_connections_dropped_at_random_under_workers_lose_nothing_and_send_nothing_twice(
    postgres_engine: Engine, redis_url: str, local_network: None
) -> None:
    _truncate(postgres_engine)
    clock = FrozenClock(START)
    namespace = f"nurture-chaos-{uuid.uuid4().hex[:8]}"
    emails, sms = Recorder(EMAIL), Recorder(SMS)
    channels = {EMAIL: emails, SMS: sms}
    regular = [f"reg{i}@chaos.test" for i in range(50)]
    vips = [f"vip{i}@chaos.test" for i in range(10)]
    chaos_engine = make_engine(
        POSTGRES_URL, connect_args={"application_name": "nurture-chaos"}, pool_size=8
    )
    with CrmReceiver() as crm:
        environ = {
            "NURTURE_CRM_WEBHOOK_URL": crm.endpoint,
            "NURTURE_CRM_WEBHOOK_SECRET": crm.secret,
        }
        worker_app = make_app(chaos_engine, clock, channels, environ=environ)
        scheduler_app = make_app(postgres_engine, clock, channels, environ=environ)
        worker_broker = RedisBroker(url=redis_url, namespace=namespace)
        scheduler_broker = RedisBroker(url=redis_url, namespace=namespace)
        Tasks(worker_broker, worker_app)
        scheduler = Tasks(scheduler_broker, scheduler_app)
        worker = dramatiq.Worker(worker_broker, worker_threads=4, worker_timeout=100)
        stop = threading.Event()
        kills: list[int] = []
        dropped: list[str] = []  # what the workers saw: transactions that failed mid-way
        event.listen(
            chaos_engine,
            "handle_error",
            lambda context: dropped.append(str(context.statement)[:40]),
        )

        def chaos() -> None:
            """Kill the workers' backends that are inside a transaction, again and again."""
            rng = random.Random(7)
            while not stop.is_set():
                with postgres_engine.connect() as admin:
                    pids = admin.scalars(
                        text(
                            "SELECT pid FROM pg_stat_activity WHERE application_name = "
                            "'nurture-chaos' AND state IN ('active', 'idle in transaction')"
                        )
                    ).all()
                    for pid in pids:
                        if rng.random() < 0.5:
                            admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                            kills.append(pid)
                stop.wait(rng.uniform(0.01, 0.05))

        killer = threading.Thread(target=chaos, daemon=True)
        worker.start()
        killer.start()
        try:
            for n, email in enumerate(regular + vips):
                lead = {"email": email, **(VP if email in vips else {})}
                second = "demo_requested" if email in vips else "content_downloaded"
                for kind in ("form_submitted", second):
                    scheduler.process_events.send(
                        [{"lead": lead, "type": kind, "properties": {}, "id": f"{kind}-{n}"}]
                    )
            started = time.monotonic()
            while time.monotonic() - started < 8 and (
                len(kills) < 15 or time.monotonic() - started < 1
            ):
                time.sleep(0.05)
            stop.set()
            killer.join(5)
            for _ in range(4):  # drain, then let leases and send_timeout run out, and again
                for queue in QUEUES:
                    scheduler_broker.join(queue, timeout=60_000)
                worker.join()
                clock.advance(timedelta(minutes=11))
                while scheduler.tick():
                    for queue in QUEUES:
                        scheduler_broker.join(queue, timeout=60_000)
                    worker.join()
        finally:
            stop.set()
            worker.stop()
            worker_broker.close()
            scheduler_broker.close()
            chaos_engine.dispose()
            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(f"{namespace}*"):
                client.delete(key)
            client.close()

    assert len(kills) >= 15 and len(dropped) >= 5, "the chaos should have cut transactions"
    with Session(postgres_engine) as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 120  # no event lost or doubled
        leads = {lead.email: lead for lead in s.scalars(select(Lead))}
        assert set(leads) == set(regular + vips)
        for email in regular:
            assert (leads[email].stage, leads[email].engagement) == ("lead", 18), email
        for email in vips:
            lead = leads[email]
            assert (lead.stage, lead.engagement, lead.fit) == ("sql", 40, 10), email
        for lead in leads.values():  # the ledger adds up to the score, row for row
            points = s.scalar(
                select(func.sum(ScoreEntry.points)).where(ScoreEntry.lead_id == lead.id)
            )
            assert points == lead.score, lead.email
        enrolments = collections.Counter(e.lead_id for e in s.scalars(select(Enrolment)))
        assert all(enrolments[leads[e].id] == 1 for e in regular)  # two triggers, one enrolment
        deliveries = s.scalars(select(Delivery)).all()
        handoffs = s.scalars(select(Handoff)).all()
    assert {d.status for d in deliveries} <= FINAL
    regular_ids = {leads[e].id for e in regular}
    welcomes = [d for d in deliveries if d.lead_id in regular_ids]
    assert sorted(d.lead_id for d in welcomes) == sorted(regular_ids)  # one each, none lost
    assert {d.status for d in welcomes} <= {"sent", "unknown"}
    assert max(emails.ids().values()) == 1  # nothing sent twice
    statuses = {d.id: d.status for d in deliveries}
    for delivery_id in emails.ids():  # what the provider got is sent or unknown, never retried
        assert statuses[delivery_id] in ("sent", "unknown")
    assert {d.id for d in deliveries if d.status == "sent"} <= set(emails.ids())
    assert sorted(h.lead_id for h in handoffs) == sorted(leads[e].id for e in vips)
    assert {h.status for h in handoffs} == {"delivered"}
    assert set(crm.keys) == {f"handoff-{h.id}" for h in handoffs}
