"""End to end on real PostgreSQL and Redis: scheduler, Dramatiq worker, SendGrid and Twilio
adapters against the local provider servers, provider feedback, and the CRM handoff."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from channels.webhooks import parse_sendgrid_events
from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.feedback import record_delivery_event
from engine.models import Delivery, Enrolment, Handoff, Lead
from engine.runner.actors import Tasks
from engine.settings import QUEUES, Settings
from tests.channels.servers import SendGridServer, SendGridSigner, TwilioServer
from tests.crm import CrmReceiver

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "engine" / "fixtures" / "workflows"
LEAD = {
    "email": "dana@initech.test",
    "phone": "+15005550001",
    "first_name": "Dana",
    "company": "Initech",
    "sms_consent": True,
    "timezone": "America/Chicago",
}


class Pipeline:
    """An App on PostgreSQL with a Redis broker, one in-thread Dramatiq worker and test servers."""

    def __init__(
        self,
        app: App,
        broker: RedisBroker,
        tasks: Tasks,
        clock: FrozenClock,
        sendgrid: SendGridServer,
        twilio: TwilioServer,
        crm: CrmReceiver,
    ) -> None:
        self.app, self.broker, self.tasks, self.clock = app, broker, tasks, clock
        self.sendgrid, self.twilio, self.crm = sendgrid, twilio, crm

    def drain(self) -> None:
        """Tick the scheduler and wait until every queue is empty and nothing more is due."""
        for _ in range(20):
            enqueued = self.tasks.tick()
            for queue in QUEUES:
                self.broker.join(queue, timeout=20_000)
            self.worker.join()
            if enqueued == 0 and self.tasks.tick() == 0:
                return
        raise AssertionError("the pipeline did not settle")

    def track(self, event: str, properties: dict[str, object] | None = None) -> None:
        """Post an event the way the API does: through the events queue."""
        self.tasks.process_events.send(
            [{"lead": LEAD, "type": event, "properties": properties or {}, "id": str(uuid.uuid4())}]
        )
        self.drain()

    def session(self) -> Session:
        return self.app.sessions()


@pytest.fixture
def pipeline(
    postgres_engine: Engine, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pipeline]:
    from tests.conftest import START, _truncate

    _truncate(postgres_engine)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    clock = FrozenClock(START)
    with SendGridServer() as sendgrid, TwilioServer() as twilio, CrmReceiver() as crm:
        environ = {
            "SENDGRID_API_KEY": "SG.test-key",
            "NURTURE_SENDGRID_HOST": sendgrid.url,
            "TWILIO_ACCOUNT_SID": twilio.account_sid,
            "TWILIO_AUTH_TOKEN": twilio.auth_token,
            "NURTURE_TWILIO_BASE_URL": twilio.url,
            "NURTURE_CRM_WEBHOOK_URL": crm.endpoint,
            "NURTURE_CRM_WEBHOOK_SECRET": crm.secret,
        }
        settings = Settings.from_env(
            {
                "NURTURE_WORKFLOWS": str(FIXTURES),
                "NURTURE_TEMPLATES": str(ROOT / "templates"),
            }
        )
        app = App.create(settings, clock=clock, environ=environ, engine=postgres_engine)
        namespace = f"nurture-test-{uuid.uuid4().hex[:8]}"
        broker = RedisBroker(url=redis_url, namespace=namespace)
        tasks = Tasks(broker, app)
        worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
        worker.start()
        p = Pipeline(app, broker, tasks, clock, sendgrid, twilio, crm)
        p.worker = worker  # type: ignore[attr-defined]
        try:
            yield p
        finally:
            worker.stop()
            broker.close()
            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(f"{namespace}*"):
                client.delete(key)
            client.close()


def _sent(p: Pipeline) -> list[tuple[str, str]]:
    with p.session() as s:
        rows = s.scalars(
            select(Delivery).where(Delivery.status == "sent").order_by(Delivery.sent_at)
        )
        return [(d.template, d.channel) for d in rows]


def _click(p: Pipeline, template: str) -> None:
    """SendGrid reports a click on the email sent from `template`, through the signed webhook."""
    with p.session() as s:
        delivery = s.scalars(select(Delivery).where(Delivery.template == template)).one()
    signer = SendGridSigner()
    body = json.dumps(
        [
            {
                "email": LEAD["email"],
                "timestamp": int(p.clock.now().timestamp()),
                "event": "click",
                "sg_event_id": f"evt-{uuid.uuid4().hex}",
                "sg_message_id": f"{delivery.provider_message_id}.filter0001",
                "url": "https://acme.test/pricing",
                "delivery_id": delivery.id,
            }
        ]
    ).encode()
    timestamp = str(int(p.clock.now().timestamp()))
    events = parse_sendgrid_events(
        body,
        signature=signer.sign(timestamp, body),
        timestamp=timestamp,
        public_key=signer.public_key,
    )
    with p.app.sessions.begin() as s:
        for event in events:
            record_delivery_event(s, p.app.rt, event)
    p.drain()


def test_a_lead_is_nurtured_through_the_providers_and_handed_to_sales_once(p: Pipeline) -> None:
    p.track("form_submitted")  # 10 points: enrolled, welcome goes out at once
    assert _sent(p) == [("welcome", "email")]
    (message,) = p.sendgrid.accepted
    assert message["personalizations"][0]["to"][0]["email"] == "dana@initech.test"
    assert message["custom_args"]["delivery_id"]
    assert "Dana" in message["content"][1]["value"]

    p.clock.advance(timedelta(days=2))
    p.drain()
    assert _sent(p)[-1] == ("case_study", "email")
    p.clock.advance(timedelta(days=3))
    p.drain()
    assert _sent(p)[-1] == ("quick_question", "sms")
    (sms,) = p.twilio.accepted
    assert sms["to"] == LEAD["phone"] and sms["body"].endswith("Reply STOP to opt out.")

    p.track("content_downloaded")  # 18
    _click(p, "welcome")  # +6 = 24: the score trigger moves the lead to consideration
    with p.session() as s:
        assert s.scalars(select(Enrolment)).one().milestone == "consideration"
    assert _sent(p)[-1] == ("pricing_guide", "email")

    p.track("demo_requested")  # 54 but fit 0: still nurtured
    with p.session() as s:
        assert s.scalars(select(Lead)).one().stage == "mql"
    LEAD["title"] = "Director of IT"  # fit 10 arrives with the next event: SQL
    try:
        p.track("page_viewed", {"url": "/pricing"})
    finally:
        LEAD.pop("title")
    with p.session() as s:
        lead = s.scalars(select(Lead)).one()
        assert lead.stage == "sql"
        assert s.scalars(select(Enrolment)).one().exit_reason == "sql"
        handoff = s.scalars(select(Handoff)).one()
        assert handoff.status == "delivered"
    p.clock.advance(timedelta(days=2))  # the branch step after the wait never runs
    p.drain()
    assert _sent(p)[-1] == ("pricing_guide", "email")
    assert len(p.crm.received) == 1
    assert p.crm.received[0]["lead"]["email"] == "dana@initech.test"
    p.track("email_clicked")  # more activity after the handoff: still one handoff
    assert len(p.crm.received) == 1


@pytest.fixture
def p(pipeline: Pipeline) -> Pipeline:
    return pipeline
