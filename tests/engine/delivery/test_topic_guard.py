"""The topic guard: a lead who left a topic gets no more emails of sequences with that topic,
and everything else still goes; `topic_unsubscribed` must name a topic and counts once."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.sending import send_delivery
from engine.errors import InvalidLeadError
from engine.funnel.service import track
from engine.models import Delivery, Event, Lead, TopicOptOut
from engine.runner.inline import run_due
from tests.apps import outbox_app

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "engine" / "fixtures" / "workflows"
LEAD = {"email": "kim@umbrella.test", "phone": "+15005550009", "sms_consent": True}
NEWS = """\
name: news
topic: product-news
enrol: {on: {event: form_submitted}}
send: {from: "Acme <hello@acme.test>", sms_from: "+15005550006"}
milestones:
  - id: updates
    steps: [{email: welcome}, {wait: 2d}, {email: case_study}, {sms: quick_question}]
"""
WEBINARS = """\
name: webinar-invites
topic: webinars
enrol: {on: {event: form_submitted}}
send: {from: "Acme Events <events@acme.test>"}
milestones:
  - id: invites
    steps: [{email: whats_new}, {wait: 2d}, {email: demo_invite}]
"""


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    """Kim, an SMS opt-in, is in two sequences of different topics from the same form."""
    folder = tmp_path / "workflows"
    folder.mkdir()
    shutil.copy(FIXTURES / "scoring.yml", folder / "scoring.yml")
    (folder / "news.yml").write_text(NEWS)
    (folder / "webinars.yml").write_text(WEBINARS)
    app = outbox_app(db, clock, tmp_path, folder)
    with app.sessions.begin() as s:
        track(s, app.rt, LEAD, "form_submitted")
    return app


def _run(app: App, clock: FrozenClock, days: int = 0) -> dict[str, tuple[str, str | None]]:
    """Move the clock, send what is due; every delivery's template, status and detail."""
    clock.advance(timedelta(days=days))
    run_due(app.sessions, app.rt)
    with app.sessions() as s:
        planned = list(s.scalars(select(Delivery.id).where(Delivery.status == "planned")))
    for delivery_id in planned:
        send_delivery(app, delivery_id)
    with app.sessions() as s:
        rows = s.execute(select(Delivery.template, Delivery.status, Delivery.detail))
        return {template: (str(status), detail) for template, status, detail in rows}


def _leave(app: App, topic: object, event_id: str | None = None) -> None:
    with app.sessions.begin() as s:
        track(s, app.rt, LEAD, "topic_unsubscribed", {"topic": topic}, event_id=event_id)


def test_leaving_a_topic_skips_only_the_emails_of_sequences_with_that_topic(
    nurture: App, clock: FrozenClock
) -> None:
    assert _run(nurture, clock) == {"welcome": ("sent", None), "whats_new": ("sent", None)}

    _leave(nurture, "product-news")

    _run(nurture, clock, days=2)
    assert _run(nurture, clock, days=1) == {
        "welcome": ("sent", None),
        "whats_new": ("sent", None),
        "case_study": ("skipped", "unsubscribed from topic product-news"),
        "quick_question": ("sent", None),  # SMS has its own opt-in and STOP
        "demo_invite": ("sent", None),  # another topic
    }
    with nurture.sessions() as s:
        lead = s.scalars(select(Lead)).one()
    assert lead.email_consent is True


def test_leaving_a_topic_before_the_first_email_skips_it_at_once(
    nurture: App, clock: FrozenClock
) -> None:
    _leave(nurture, "webinars")

    assert _run(nurture, clock) == {
        "welcome": ("sent", None),
        "whats_new": ("skipped", "unsubscribed from topic webinars"),
    }


def test_leaving_the_same_topic_twice_keeps_one_choice_and_both_events(
    nurture: App, clock: FrozenClock
) -> None:
    _leave(nurture, "webinars", "a")
    _leave(nurture, "webinars", "b")
    _leave(nurture, "webinars", "b")  # a duplicate event: nothing at all

    with nurture.sessions() as s:
        assert s.scalars(select(TopicOptOut.topic)).all() == ["webinars"]
        count = select(func.count()).where(Event.type == "topic_unsubscribed")
        assert s.scalar(count) == 2


@pytest.mark.parametrize("topic", [None, "", "Product News", 7, ["webinars"]])
def test_a_topic_unsubscribed_event_without_a_proper_topic_is_refused_and_nothing_is_stored(
    nurture: App, topic: object
) -> None:
    with pytest.raises(InvalidLeadError, match="needs a topic property"):
        _leave(nurture, topic)

    with nurture.sessions() as s:
        assert s.scalar(select(func.count()).select_from(TopicOptOut)) == 0
        assert s.scalars(select(Event.type)).all() == ["form_submitted"]
