"""Faults on real PostgreSQL and Redis: a worker killed mid-send, a flushed broker, a provider
answering 429 then 500 then 202. Afterwards every delivery is final and none was sent twice."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine, func, select

from channels import build_channel
from channels.sendgrid import SendGridChannel
from channels.webhooks import parse_sendgrid_events
from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.feedback import record_delivery_event
from engine.delivery.sending import send_delivery
from engine.funnel.service import track
from engine.models import Delivery
from engine.runner.actors import SEND_CHUNK, Tasks
from engine.settings import Settings
from tests.channels.servers import (
    Reply,
    Request,
    SendGridServer,
    SendGridSigner,
    free_port,
    sendgrid_errors,
)
from tests.conftest import START

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "engine" / "fixtures" / "workflows"
FINAL = {"sent", "unknown", "failed", "skipped"}
LEADS = 120


class SlowSendGrid(SendGridServer):
    """SendGrid that takes a moment per message, so a kill lands in the middle of sends."""

    def handle(self, request: Request) -> Reply:
        try:
            messages = len(json.loads(request.body)["personalizations"])
        except (ValueError, KeyError, TypeError):
            messages = 1
        time.sleep(0.03 * messages)
        return super().handle(request)


def _delivery_ids(server: SendGridServer) -> collections.Counter[str]:
    """How often each delivery reached the provider: a batch is one request, its messages
    one personalization each."""
    return collections.Counter(email.custom_args["delivery_id"] for email in server.emails)


@pytest.fixture
def workflows(tmp_path: Path) -> Path:
    """The test workflows with short leases, so lost work comes back within seconds."""
    folder = tmp_path / "workflows"
    shutil.copytree(FIXTURES, folder)
    (folder / "sending.yml").write_text(
        "send_timeout: 3s\nretries: {max_attempts: 5, backoff: 1s}\n"
    )
    return folder


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A Redis key prefix for this test's broker, removed afterwards."""
    name = f"nurture-fault-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{name}*"):
        client.delete(key)
    client.close()


def _environ(server: SendGridServer, workflows: Path, redis_url: str) -> dict[str, str]:
    from tests.conftest import POSTGRES_URL

    return {
        **os.environ,
        "NO_PROXY": "127.0.0.1,localhost",
        "NURTURE_DATABASE_URL": POSTGRES_URL,
        "NURTURE_REDIS_URL": redis_url,
        "NURTURE_WORKFLOWS": str(workflows),
        "NURTURE_TEMPLATES": str(ROOT / "templates"),
        "SENDGRID_API_KEY": "SG.test-key",
        "NURTURE_SENDGRID_HOST": server.url,
        "NURTURE_SMS_CHANNEL": "console",
    }


def _enrol(app: App, count: int) -> None:
    with app.sessions.begin() as s:
        for i in range(count):
            track(s, app.rt, {"email": f"lead{i}@fault.test"}, "form_submitted")


def _settle(app: App, tasks: Tasks, seconds: float) -> dict[str, int]:
    """Tick the scheduler until every delivery is final (or time runs out); statuses counted."""
    deadline = time.monotonic() + seconds
    while True:
        tasks.tick()
        with app.sessions() as s:
            counts = dict(
                s.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all()
            )
        if sum(counts.values()) == LEADS and set(counts) <= FINAL:
            return counts
        if time.monotonic() > deadline:
            return counts
        time.sleep(0.3)


def _worker_process(environ: dict[str, str], namespace: str) -> subprocess.Popen[bytes]:
    code = (
        "import sys, dramatiq, threading;"
        "from dramatiq.brokers.redis import RedisBroker;"
        "from engine.app import App; from engine.runner.actors import Tasks;"
        "app = App.create();"
        f"broker = RedisBroker(url=app.settings.redis_url, namespace={namespace!r});"
        "Tasks(broker, app);"
        "w = dramatiq.Worker(broker, worker_threads=4); w.start();"
        "print('ready', flush=True); threading.Event().wait()"
    )
    process = subprocess.Popen([sys.executable, "-c", code], env=environ, stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
    return process


def test_a_worker_killed_mid_send_loses_nothing_and_sends_nothing_twice(
    postgres_engine: Engine,
    redis_url: str,
    workflows: Path,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.conftest import _truncate

    _truncate(postgres_engine)
    with SlowSendGrid() as server:
        environ = _environ(server, workflows, redis_url)
        app = App.create(Settings.from_env(environ), environ=environ, engine=postgres_engine)
        tasks = Tasks(RedisBroker(url=redis_url, namespace=namespace), app, timedelta(seconds=2))
        _enrol(app, LEADS)
        first = _worker_process(environ, namespace)
        tasks.tick()
        deadline = time.monotonic() + 30
        while len(server.emails) < 30 and time.monotonic() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = len(server.emails)
        assert 30 <= killed_at < LEADS, "the kill should land in the middle of the sends"
        second = _worker_process(environ, namespace)
        try:
            counts = _settle(app, tasks, seconds=60)
        finally:
            second.terminate()
            second.wait(10)
    assert set(counts) <= FINAL and sum(counts.values()) == LEADS, counts
    sent_twice = [d for d, n in _delivery_ids(server).items() if n > 1]
    assert sent_twice == []
    with app.sessions() as s:
        sent = set(s.scalars(select(Delivery.id).where(Delivery.status == "sent")))
    assert sent <= set(_delivery_ids(server))
    # at most the batches in flight in the 4 killed threads: marked `sending` before their
    # first provider call, they are never sent again (a provider webhook settles them)
    assert counts.get("unknown", 0) <= 4 * SEND_CHUNK


def test_a_flushed_broker_loses_no_planned_send(
    postgres_engine: Engine,
    redis_url: str,
    workflows: Path,
    namespace: str,
) -> None:
    from tests.conftest import _truncate

    _truncate(postgres_engine)
    with SendGridServer() as server:
        environ = _environ(server, workflows, redis_url)
        app = App.create(Settings.from_env(environ), environ=environ, engine=postgres_engine)
        broker = RedisBroker(url=redis_url, namespace=namespace)
        tasks = Tasks(broker, app, timedelta(seconds=2))
        _enrol(app, LEADS)
        assert tasks.tick() == LEADS  # every enrolment claimed and enqueued ...
        client = redis.Redis.from_url(redis_url)
        lost = 0
        for key in client.scan_iter(f"{namespace}*"):
            lost += client.delete(key)  # ... and the broker forgets all of it
        client.close()
        assert lost
        worker = dramatiq.Worker(broker, worker_threads=4)
        worker.start()
        try:
            counts = _settle(app, tasks, seconds=60)
        finally:
            worker.stop()
    assert counts == {"sent": LEADS}
    assert max(_delivery_ids(server).values()) == 1


def test_a_provider_answering_429_then_500_then_202_sends_once(
    postgres_engine: Engine, workflows: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import START, _truncate

    _truncate(postgres_engine)
    clock = FrozenClock(START)
    with SendGridServer() as server:
        environ = _environ(server, workflows, "")
        app = App.create(
            Settings.from_env(environ), clock=clock, environ=environ, engine=postgres_engine
        )
        with app.sessions.begin() as s:
            track(s, app.rt, {"email": "retry@fault.test"}, "form_submitted")
        from engine.runner.inline import run_due

        run_due(app.sessions, app.rt)
        with app.sessions() as s:
            delivery_id = s.scalars(select(Delivery.id)).one()
        reset = str(int((clock.now() + timedelta(seconds=20)).timestamp()))
        server.then(
            sendgrid_errors(429, ("too many requests", None), headers={"X-RateLimit-Reset": reset}),
            sendgrid_errors(500, ("internal error", None)),
        )

        def attempt() -> str:
            return send_delivery(app, delivery_id)

        assert attempt() == "planned"  # 429: back off until the provider's reset time
        assert attempt() == "not sent"  # not due yet: nothing reaches the provider
        clock.advance(timedelta(seconds=20))
        assert attempt() == "planned"  # 500: backoff doubles
        clock.advance(timedelta(seconds=1))
        assert attempt() == "not sent"
        clock.advance(timedelta(seconds=1))
        assert attempt() == "sent"
        assert attempt() == "not sent"  # a retry after success never resends
    assert len(server.accepted) == 1 and len(server.requests) == 3
    with app.sessions() as s:
        delivery = s.get_one(Delivery, delivery_id)
        assert (delivery.status, delivery.attempts) == ("sent", 3)


# --- At most once: retry only what provably did not reach the provider -----------------------


def _app_sending_to(host: str, workflows: Path, engine: Engine, clock: FrozenClock) -> App:
    """An app on PostgreSQL whose SendGrid adapter (the real SDK) posts to `host`, and answers
    that take longer than half a second time out."""
    from tests.conftest import POSTGRES_URL, _truncate

    _truncate(engine)
    environ = {
        **os.environ,
        "NURTURE_DATABASE_URL": POSTGRES_URL,
        "NURTURE_REDIS_URL": "",
        "NURTURE_WORKFLOWS": str(workflows),
        "NURTURE_TEMPLATES": str(ROOT / "templates"),
        "NURTURE_PUBLIC_URL": "https://nurture.acme.test",
    }
    channels = {
        "email": SendGridChannel("SG.test-key", host=host, timeout=0.5, clock=clock),
        "sms": build_channel("console", environ, channel="sms", clock=clock),
    }
    settings = Settings.from_env(environ)
    return App.create(settings, clock=clock, environ=environ, channels=channels, engine=engine)


def _planned_welcome(app: App) -> str:
    with app.sessions.begin() as s:
        track(s, app.rt, {"email": "once@fault.test"}, "form_submitted")
    from engine.runner.inline import run_due

    run_due(app.sessions, app.rt)
    with app.sessions() as s:
        return s.scalars(select(Delivery.id)).one()


def _work(broker: StubBroker, worker: dramatiq.Worker) -> None:
    """Let the worker finish every queued send."""
    broker.join("sends", timeout=10_000)
    worker.join()


def test_a_send_whose_answer_times_out_is_unknown_and_never_sent_again(
    postgres_engine: Engine, workflows: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    clock = FrozenClock(START)
    broker = StubBroker()
    with SendGridServer() as server:
        app = _app_sending_to(server.url, workflows, postgres_engine, clock)
        delivery_id = _planned_welcome(app)
        # SendGrid takes the message, and its answer comes after the client gave up.
        server.then(Reply(202, headers={"X-Message-Id": "msg-late"}, delay=1.5))
        tasks = Tasks(broker, app, timedelta(seconds=2))
        worker = dramatiq.Worker(broker, worker_threads=2)
        worker.start()
        try:
            tasks.send_deliveries.send([delivery_id])
            _work(broker, worker)
            tasks.send_deliveries.send([delivery_id])  # a redelivered message
            for _ in range(3):  # leases and every backoff run out; the scheduler looks again
                clock.advance(timedelta(minutes=15))
                tasks.tick()
                _work(broker, worker)
        finally:
            worker.stop()
        assert len(server.requests) == 1
        with app.sessions() as s:
            delivery = s.get_one(Delivery, delivery_id)
            assert (delivery.status, delivery.attempts) == ("unknown", 1)
            assert delivery.detail.startswith("unknown: sendgrid: outcome unknown")

        # Later SendGrid's event webhook reports on it, with our delivery id: settled as sent.
        signer = SendGridSigner()
        body = json.dumps(
            [
                {
                    "email": "once@fault.test",
                    "timestamp": int(clock.now().timestamp()),
                    "event": "delivered",
                    "sg_event_id": "evt-delivered-late",
                    "sg_message_id": "msg-late.recvd-1-0",
                    "delivery_id": delivery_id,
                }
            ]
        ).encode()
        stamp = str(int(clock.now().timestamp()))
        (event,) = parse_sendgrid_events(
            body, signature=signer.sign(stamp, body), timestamp=stamp, public_key=signer.public_key
        )
        with app.sessions.begin() as s:
            record_delivery_event(s, app.rt, event)
        tasks.tick()
    assert len(server.requests) == 1
    with app.sessions() as s:
        delivery = s.get_one(Delivery, delivery_id)
        assert (delivery.status, delivery.provider, delivery.provider_message_id) == (
            "sent",
            "sendgrid",
            "msg-late",
        )


def test_a_refused_connection_is_retried_and_sent_once(
    postgres_engine: Engine, workflows: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    clock = FrozenClock(START)
    port = free_port()  # nobody listens yet: the connection is refused
    app = _app_sending_to(f"http://127.0.0.1:{port}", workflows, postgres_engine, clock)
    delivery_id = _planned_welcome(app)
    broker = StubBroker()
    tasks = Tasks(broker, app, timedelta(seconds=2))
    worker = dramatiq.Worker(broker, worker_threads=2)
    worker.start()
    try:
        tasks.send_deliveries.send([delivery_id])
        _work(broker, worker)
        with app.sessions() as s:
            delivery = s.get_one(Delivery, delivery_id)
            assert (delivery.status, delivery.attempts) == ("planned", 1)
        with SendGridServer(port=port) as server:  # SendGrid is back
            for _ in range(3):
                clock.advance(timedelta(minutes=15))
                tasks.tick()
                _work(broker, worker)
    finally:
        worker.stop()
    assert len(server.requests) == len(server.accepted) == 1
    with app.sessions() as s:
        delivery = s.get_one(Delivery, delivery_id)
        assert (delivery.status, delivery.attempts) == ("sent", 2)
        assert delivery.provider_message_id == server.message_ids[0]
