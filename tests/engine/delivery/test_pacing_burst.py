"""A burst of due SMS from one sender is spread at the provider's rate, not thrown at it."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from channels.twilio import TwilioChannel
from engine.delivery.pacing import LocalPacer
from engine.delivery.rendering import Renderer
from engine.delivery.sending import send_delivery
from engine.funnel.service import track
from engine.models import Delivery
from engine.runner.inline import run_due
from engine.settings import Settings
from engine.workflow.runtime import Runtime
from engine.workflow.spec import SendPolicy
from tests.channels.servers import TwilioServer

ROOT = Path(__file__).resolve().parents[3]
BURST = 24
LIMIT = 12.0  # messages per second the test provider allows per sender, 429 past it
RATE = LIMIT * 0.95  # the configured pace keeps a margin for network jitter


@pytest.fixture
def twilio(monkeypatch: pytest.MonkeyPatch) -> TwilioServer:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    for name in ("TWILIO_EDGE", "TWILIO_REGION"):
        monkeypatch.delenv(name, raising=False)
    server = TwilioServer(rate_limit=LIMIT).start()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_a_burst_of_due_sms_is_paced_under_the_providers_limit(
    db: object, sessions: sessionmaker[Session], rt: Runtime, twilio: TwilioServer
) -> None:
    sms_only = replace(
        rt.workflows.sequences["drip"],
        milestones=(
            replace(
                rt.workflows.sequences["drip"].milestones[0],
                steps=(rt.workflows.sequences["drip"].milestones[0].steps[-1],),
            ),  # the quick_question SMS
            *rt.workflows.sequences["drip"].milestones[1:],
        ),
    )
    burst_rt = Runtime(replace(rt.workflows, sequences={"drip": sms_only}), rt.clock)
    with sessions.begin() as s:
        for i in range(BURST):
            lead = {"email": f"p{i}@burst.test", "phone": f"+1500555{i:04d}", "sms_consent": True}
            track(s, burst_rt, lead, "form_submitted")
    run_due(sessions, burst_rt)
    with sessions() as s:
        ids = list(s.scalars(select(Delivery.id).where(Delivery.channel == "sms")))
    assert len(ids) == BURST
    channel = TwilioChannel(twilio.account_sid, twilio.auth_token, base_url=twilio.url)
    policy = SendPolicy(rates={"sms": RATE}, pace_timeout=30)
    pacer = LocalPacer()
    settings = Settings.from_env({})
    renderer = Renderer(ROOT / "templates")

    context = SimpleNamespace(
        sessions=sessions,
        rt=replace(burst_rt, send=policy),
        settings=settings,
        renderer=renderer,
        channels={"sms": channel},
        pacer=pacer,
    )

    def send(delivery_id: str) -> str:
        return send_delivery(context, delivery_id)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(send, ids))
    elapsed = time.monotonic() - started
    assert results == ["sent"] * BURST
    assert len(twilio.requests) == len(twilio.accepted) == BURST  # not one 429 collected
    assert elapsed >= (BURST - 1) / RATE * 0.98  # spread, not thrown at the provider
    assert (BURST - 1) / elapsed >= LIMIT * 0.85  # and still close to the provider's limit
