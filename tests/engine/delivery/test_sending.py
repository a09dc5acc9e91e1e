"""Sending one delivery: guards (consent, suppression, stale steps, windows, caps) and states."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from channels.base import SendResult
from channels.outbox import OutboxChannel
from engine.clock import FrozenClock
from engine.delivery.pacing import Pacer, PacingTimeout
from engine.delivery.rendering import Renderer
from engine.delivery.sending import send_delivery, suppress
from engine.errors import ChannelError, ErrorKind
from engine.funnel.service import track
from engine.models import Delivery
from engine.runner.inline import run_due
from engine.settings import Settings
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Cap, QuietHours, SendPolicy, Window

ROOT = Path(__file__).resolve().parents[3]
LEAD = {"email": "kim@umbrella.test", "phone": "+15005550009", "first_name": "Kim"}


class Sender:
    """send_delivery over the outbox adapter, with the shipped templates."""

    def __init__(
        self, sessions: sessionmaker[Session], rt: Runtime, outbox: Path, policy: SendPolicy
    ) -> None:
        self.sessions, self.rt, self.outbox = sessions, replace(rt, send=policy), outbox
        self.pacer: Pacer | None = None
        self.settings = Settings.from_env({"NURTURE_PUBLIC_URL": "https://nurture.acme.test"})
        self.renderer = Renderer(ROOT / "templates")
        self.channels = {c: OutboxChannel(outbox, c, rt.clock) for c in ("email", "sms")}

    def due(self) -> list[str]:
        """Send everything planned and due; the statuses send_delivery answered."""
        run_due(self.sessions, self.rt)
        with self.sessions() as s:
            ids = list(
                s.scalars(
                    select(Delivery.id)
                    .where(Delivery.status == "planned")
                    .order_by(Delivery.planned_at)
                )
            )
        return [send_delivery(self, i) for i in ids]

    def deliveries(self) -> list[Delivery]:
        with self.sessions() as s:
            order = (Delivery.planned_at, Delivery.pass_no, Delivery.step)
            return list(s.scalars(select(Delivery).order_by(*order)))


@pytest.fixture
def sender(sessions: sessionmaker[Session], rt: Runtime, tmp_path: Path) -> Sender:
    return Sender(sessions, rt, tmp_path / "outbox", SendPolicy())


def test_a_sent_email_carries_the_rendered_copy_and_one_click_unsubscribe(
    sender: Sender, sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        track(s, rt, LEAD, "form_submitted")
    assert sender.due() == ["sent"]
    (delivery,) = sender.deliveries()
    assert (delivery.status, delivery.provider, delivery.attempts) == ("sent", "outbox", 1)
    raw = (sender.outbox / "email" / f"{delivery.id}.eml").read_bytes()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["To"] == "Kim <kim@umbrella.test>"
    assert message["Subject"] == delivery.subject
    assert message["List-Unsubscribe"].strip().startswith("<https://nurture.acme.test/u/")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["X-Nurture-Delivery-Id"] == delivery.id
    assert sender.due() == []  # nothing is sent twice


def test_sms_needs_explicit_opt_in(
    sender: Sender, sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    with sessions.begin() as s:
        track(s, rt, LEAD, "form_submitted")
    for days in (0, 2, 3):
        clock.advance(timedelta(days=days))
        sender.due()
    sms = [d for d in sender.deliveries() if d.channel == "sms"]
    assert [(d.status, d.detail) for d in sms] == [("skipped", "no SMS opt-in")]


def test_the_first_sms_says_how_to_opt_out(
    sender: Sender, sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    with sessions.begin() as s:
        track(s, rt, {**LEAD, "sms_consent": True}, "form_submitted")
    for days in (0, 2, 3):
        clock.advance(timedelta(days=days))
        sender.due()
    (sms,) = [d for d in sender.deliveries() if d.channel == "sms"]
    assert sms.status == "sent"
    body = (sender.outbox / "sms" / f"{sms.id}.txt").read_text()
    assert "Reply STOP to opt out." in body


def test_a_suppressed_address_is_skipped(
    sender: Sender, sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    with sessions.begin() as s:
        suppress(s, "email", "kim@umbrella.test", "bounced", clock.now())
        track(s, rt, LEAD, "form_submitted")
    assert sender.due() == ["not sent"]
    assert [(d.status, d.detail) for d in sender.deliveries()] == [
        ("skipped", "suppressed: kim@umbrella.test")
    ]


def test_a_step_the_lead_moved_past_is_skipped_as_stale(
    sender: Sender, sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        track(s, rt, LEAD, "form_submitted")
    run_due(sessions, rt)  # welcome planned, not yet sent
    with sessions.begin() as s:
        track(s, rt, LEAD, "demo_requested")  # 40: moves to consideration at once
    sender.due()
    assert [(d.template, d.status) for d in sender.deliveries()] == [
        ("welcome", "skipped"),
        ("pricing_guide", "sent"),
    ]


def test_outside_the_send_window_a_send_is_deferred_to_the_leads_next_morning(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, tmp_path: Path
) -> None:
    office = Window(days=frozenset(range(5)), start=time(9), end=time(17))
    drip = rt.workflows.sequences["drip"]
    windowed = replace(drip, send=replace(drip.send, window=office))
    workflows = replace(rt.workflows, sequences={**rt.workflows.sequences, "drip": windowed})
    late = Runtime(workflows, clock)
    clock.set(datetime(2026, 3, 6, 23, 30, tzinfo=UTC))  # Friday 17:30 in Chicago
    sender = Sender(sessions, late, tmp_path, SendPolicy())
    with sessions.begin() as s:
        track(s, late, {**LEAD, "timezone": "America/Chicago"}, "form_submitted")
    assert sender.due() == ["not sent"]
    (delivery,) = sender.deliveries()
    assert (delivery.status, delivery.due_at) == (
        "planned",
        datetime(2026, 3, 9, 14, 0, tzinfo=UTC),  # Monday 09:00 CDT
    )
    clock.set(delivery.due_at)
    sender.due()
    assert sender.deliveries()[0].status == "sent"


def test_quiet_hours_defer_sms_in_the_leads_time_zone(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, tmp_path: Path
) -> None:
    policy = SendPolicy(quiet_hours={"sms": QuietHours(time(21), time(8))})
    sender = Sender(sessions, rt, tmp_path, policy)
    with sessions.begin() as s:
        lead = {**LEAD, "sms_consent": True, "timezone": "America/Los_Angeles"}
        track(s, rt, lead, "form_submitted")
    for days in (0, 2, 3):  # the SMS step falls due on Saturday 09:00 UTC, 01:00 in Los Angeles
        clock.advance(timedelta(days=days))
        sender.due()
    sms = [d for d in sender.deliveries() if d.channel == "sms"]
    assert [(d.status, d.due_at) for d in sms] == [
        ("planned", datetime(2026, 3, 7, 16, 0, tzinfo=UTC))  # 08:00 in Los Angeles
    ]
    assert sms[0].detail == (  # why, in the lead's own time: what `lead show` prints
        "deferred to 2026-03-07T16:00:00+00:00 (Sat 08:00 America/Los_Angeles): "
        "quiet hours 21:00-08:00"
    )


def test_a_frequency_cap_across_sequences_defers_the_next_email(
    sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock, tmp_path: Path
) -> None:
    policy = SendPolicy(caps={"email": Cap(count=1, per=timedelta(days=3))})
    sender = Sender(sessions, rt, tmp_path, policy)
    with sessions.begin() as s:
        track(s, rt, LEAD, "form_submitted")
    assert sender.due() == ["sent"]  # welcome
    clock.advance(timedelta(days=2))
    assert sender.due() == ["not sent"]  # case_study waits for the cap
    case_study = sender.deliveries()[1]
    assert (case_study.status, case_study.due_at) == ("planned", clock.now() + timedelta(days=1))
    assert case_study.detail.endswith("): frequency cap 1 email per 3d")
    clock.advance(timedelta(days=1))
    assert sender.due() == ["sent"]


def test_a_template_that_fails_to_render_fails_its_delivery_without_sending(
    sessions: sessionmaker[Session], rt: Runtime, tmp_path: Path
) -> None:
    broken = tmp_path / "templates"
    (broken / "email").mkdir(parents=True)
    (broken / "email" / "welcome.j2").write_text(
        "{% block subject %}Hi {{ lead.nickname.first }}{% endblock %}"
        "{% block html %}x {{ unsubscribe_url }}{% endblock %}"
    )
    sender = Sender(sessions, rt, tmp_path / "outbox", SendPolicy())
    sender.renderer = Renderer(broken)
    with sessions.begin() as s:
        track(s, rt, LEAD, "form_submitted")
    assert sender.due() == ["not sent"]
    (delivery,) = sender.deliveries()
    assert delivery.status == "failed" and delivery.detail.startswith("render: template 'welcome'")
    assert not (tmp_path / "outbox" / "email").exists()


class NoSlots:
    """A pacer with no free slot: any send that asks for one is re-planned."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def acquire(self, key: str, rate: float, *, timeout: float) -> float:
        self.asked.append(key)
        raise PacingTimeout(key, 5.0)


def test_adapters_that_reach_no_provider_are_never_paced(
    sender: Sender, sessions: sessionmaker[Session], rt: Runtime
) -> None:
    with sessions.begin() as s:
        track(s, rt, LEAD, "form_submitted")
    run_due(sessions, rt)
    with sessions() as s:
        [delivery_id] = s.scalars(select(Delivery.id).where(Delivery.status == "planned"))
    pacer = NoSlots()
    sender.pacer = pacer
    assert send_delivery(sender, delivery_id) == "sent"
    assert pacer.asked == []


def test_a_provider_adapter_waits_for_its_pacing_slot(
    sender: Sender, sessions: sessionmaker[Session], rt: Runtime
) -> None:
    class Provider(OutboxChannel):
        paced = True

    with sessions.begin() as s:
        track(s, rt, LEAD, "form_submitted")
    run_due(sessions, rt)
    with sessions() as s:
        [delivery_id] = s.scalars(select(Delivery.id).where(Delivery.status == "planned"))
    pacer = NoSlots()
    channels = {"email": Provider(sender.outbox, "email", rt.clock)}
    sender.pacer, sender.channels = pacer, channels
    assert send_delivery(sender, delivery_id) == "paced"
    assert pacer.asked == ["email:outbox"]
    with sessions() as s:
        delivery = s.get_one(Delivery, delivery_id)
        assert (delivery.status, delivery.attempts) == ("planned", 0)


class AnswerLost(OutboxChannel):
    """A provider that takes the message (the outbox file is written) and whose answer is lost."""

    def send(self, message: Any) -> SendResult:
        super().send(message)
        raise ChannelError("outcome unknown: TimeoutError: timed out", ErrorKind.UNKNOWN)


def test_a_send_whose_outcome_is_unknown_is_marked_unknown_and_never_sent_again(
    sender: Sender, sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    sender.channels = {"email": AnswerLost(sender.outbox, "email", rt.clock)}
    with sessions.begin() as s:
        track(s, rt, LEAD, "form_submitted")
    assert sender.due() == ["unknown"]
    (delivery,) = sender.deliveries()
    assert (delivery.status, delivery.attempts, delivery.lease_until) == ("unknown", 1, None)
    assert delivery.detail == (
        "unknown: outcome unknown: TimeoutError: timed out; not resent, a provider webhook "
        "settles it"
    )
    clock.advance(timedelta(hours=1))  # past every backoff and lease
    assert sender.due() == []
    assert send_delivery(sender, delivery.id) == "not sent"  # a redelivered message
    assert len(list((sender.outbox / "email").glob("*.eml"))) == 1


def test_an_sms_asks_twilio_to_report_its_status_with_the_delivery_id(
    sender: Sender, sessions: sessionmaker[Session], rt: Runtime, clock: FrozenClock
) -> None:
    with sessions.begin() as s:
        track(s, rt, {**LEAD, "sms_consent": True}, "form_submitted")
    for days in (0, 2, 3):
        clock.advance(timedelta(days=days))
        sender.due()
    (sms,) = [d for d in sender.deliveries() if d.channel == "sms"]
    text = (sender.outbox / "sms" / f"{sms.id}.txt").read_text()
    callback = f"https://nurture.acme.test/webhooks/twilio/status?delivery_id={sms.id}"
    assert f"Status-Callback: {callback}\n" in text
