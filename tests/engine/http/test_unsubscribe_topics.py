"""Unsubscribe topics on SQLite and PostgreSQL: a link names the topic of its email; one-click
leaves that topic only, the page may leave it or everything; the lead view shows both."""

from __future__ import annotations

import email
import email.policy
import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from channels.base import EMAIL
from channels.outbox import OutboxChannel
from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.sending import send_delivery
from engine.delivery.unsubscribe import make_token, read_token
from engine.funnel.service import track
from engine.http.api import create_api
from engine.models import Delivery, Enrolment, Event, Lead, Suppression, TopicOptOut
from engine.runner.inline import run_due
from tests.apps import outbox_app

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "engine" / "fixtures" / "workflows"
KEY = "topics-key-0123456789abcdef-0123456789"
SECRET = "topics-unsubscribe-secret"
PUBLIC_URL = "https://nurture.acme.test"
ANA = "ana@northwind.test"
FORM = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": ""}
ONE_CLICK = b"List-Unsubscribe=One-Click"
# Two sequences a new lead enters at once, each with an email now and another two days later.
NEWS = """\
name: news
topic: product-news
enrol: {on: {event: form_submitted}}
send: {from: "Acme <hello@acme.test>"}
milestones:
  - id: updates
    steps: [{email: welcome}, {wait: 2d}, {email: case_study}]
exit_when: ["unsubscribed"]
"""
WEBINARS = """\
name: webinar-invites
topic: webinars
enrol: {on: {event: form_submitted}}
send: {from: "Acme Events <events@acme.test>"}
milestones:
  - id: invites
    steps: [{email: whats_new}, {wait: 2d}, {email: demo_invite}]
exit_when: ["unsubscribed"]
"""
# A sequence that declares no topic: it sends under the default one.
PLAIN = NEWS.replace("name: news\ntopic: product-news\n", "name: plain\n")


def _app(db: Engine, clock: FrozenClock, tmp_path: Path, files: dict[str, str]) -> App:
    folder = tmp_path / "workflows"
    folder.mkdir()
    shutil.copy(FIXTURES / "scoring.yml", folder / "scoring.yml")
    for name, text in files.items():
        (folder / name).write_text(text)
    return outbox_app(
        db, clock, tmp_path, folder, NURTURE_PUBLIC_URL=PUBLIC_URL, NURTURE_SECRET_KEY=SECRET
    )


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    """Ana is in two sequences of different topics and got the first email of each."""
    app = _app(db, clock, tmp_path, {"news.yml": NEWS, "webinars.yml": WEBINARS})
    with app.sessions.begin() as s:
        track(s, app.rt, {"email": ANA}, "form_submitted")
    assert _send_due(app) == {"welcome": "sent", "whats_new": "sent"}
    return app


@pytest.fixture
def client(nurture: App) -> TestClient:
    return TestClient(create_api(nurture, api_keys=[KEY], environ={}))


def _send_due(app: App) -> dict[str, str]:
    """Plan and send what is due; each template with the status send_delivery answered."""
    run_due(app.sessions, app.rt)
    with app.sessions() as s:
        due = s.execute(select(Delivery.id, Delivery.template).where(Delivery.status == "planned"))
        planned = list(due)
    return {template: str(send_delivery(app, id_)) for id_, template in planned}


def _link(app: App, template: str) -> str:
    """The path of the one-click link in the List-Unsubscribe header of a sent email."""
    with app.sessions() as s:
        delivery_id = s.scalars(select(Delivery.id).where(Delivery.template == template)).one()
    outbox = app.channels[EMAIL]
    assert isinstance(outbox, OutboxChannel)
    raw = (outbox.directory / "email" / f"{delivery_id}.eml").read_bytes()
    header = email.message_from_bytes(raw, policy=email.policy.default)["List-Unsubscribe"]
    match = re.search(r"<https://nurture\.acme\.test(/u/[^>]+)>", header)
    assert match, header
    return match.group(1)


def _later(app: App, clock: FrozenClock) -> dict[str, tuple[str, str | None]]:
    """Two days on: the second email of each sequence, with its status and detail."""
    clock.advance(timedelta(days=2, minutes=1))
    _send_due(app)
    with app.sessions() as s:
        rows = s.execute(
            select(Delivery.template, Delivery.status, Delivery.detail).where(
                Delivery.template.in_(("case_study", "demo_invite"))
            )
        )
        return {template: (str(status), detail) for template, status, detail in rows}


def _lead(app: App) -> Lead:
    with app.sessions() as s:
        return s.scalars(select(Lead).where(Lead.email == ANA)).one()


def _count(app: App, model: type[Any]) -> int:
    with app.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _events(app: App) -> list[tuple[str, dict[str, Any], str | None]]:
    with app.sessions() as s:
        rows = s.scalars(
            select(Event).where(Event.type != "form_submitted").order_by(Event.id)
        ).all()
        return [(e.type, dict(e.properties), e.idempotency_key) for e in rows]


def test_the_link_in_an_email_names_the_topic_of_its_sequence(nurture: App) -> None:
    lead_id = _lead(nurture).id
    for template, topic in (("welcome", "product-news"), ("whats_new", "webinars")):
        token = _link(nurture, template).removeprefix("/u/")
        assert read_token(SECRET, token) == (lead_id, topic)


def test_rfc_8058_one_click_leaves_only_the_topic_of_that_email(
    client: TestClient, nurture: App, clock: FrozenClock
) -> None:
    link = _link(nurture, "welcome")

    response = client.post(link, content=ONE_CLICK, headers=FORM)

    assert response.status_code == 200
    assert "You left product-news" in response.text
    assert 'name="choice" value="all"' in response.text  # leaving everything is one click away
    lead = _lead(nurture)
    assert lead.email_consent is True
    assert _count(nurture, Suppression) == 0
    token = link.removeprefix("/u/")
    assert _events(nurture) == [
        (
            "topic_unsubscribed",
            {"topic": "product-news", "via": "one-click"},
            f"unsubscribe-topic:{token}",
        )
    ]
    with nurture.sessions() as s:
        assert s.scalars(select(Enrolment.status)).all() == ["active", "active"]
    assert _later(nurture, clock) == {
        "case_study": ("skipped", "unsubscribed from topic product-news"),
        "demo_invite": ("sent", None),
    }


def test_a_repeated_one_click_is_recorded_once(client: TestClient, nurture: App) -> None:
    link = _link(nurture, "whats_new")

    answers = [client.post(link, content=ONE_CLICK, headers=FORM) for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len(_events(nurture)) == 1
    with nurture.sessions() as s:
        assert s.scalars(select(TopicOptOut.topic)).all() == ["webinars"]


def test_the_page_names_the_topic_and_offers_leaving_it_or_everything(
    client: TestClient, nurture: App
) -> None:
    page = client.get(_link(nurture, "whats_new"), headers={"Authorization": ""})

    assert page.status_code == 200
    assert "<strong>webinars</strong>" in page.text
    assert '<button type="submit" name="choice" value="topic">Unsubscribe from webinars' in (
        page.text
    )
    assert '<button type="submit" name="choice" value="all">' in page.text
    assert _events(nurture) == []


def test_the_page_form_leaving_the_topic_keeps_the_other_topics(
    client: TestClient, nurture: App, clock: FrozenClock
) -> None:
    response = client.post(_link(nurture, "whats_new"), content=b"choice=topic", headers=FORM)

    assert response.status_code == 200
    assert [(kind, props) for kind, props, _ in _events(nurture)] == [
        ("topic_unsubscribed", {"topic": "webinars", "via": "page"})
    ]
    assert _lead(nurture).email_consent is True
    assert _later(nurture, clock) == {
        "case_study": ("sent", None),
        "demo_invite": ("skipped", "unsubscribed from topic webinars"),
    }


def test_the_page_form_leaving_everything_opts_out_and_suppresses_as_before(
    client: TestClient, nurture: App, clock: FrozenClock
) -> None:
    link = _link(nurture, "whats_new")
    client.post(link, content=ONE_CLICK, headers=FORM)  # first the topic, then everything

    response = client.post(link, content=b"choice=all", headers=FORM)

    assert response.status_code == 200
    assert "You are unsubscribed" in response.text
    assert _lead(nurture).email_consent is False
    with nurture.sessions() as s:
        suppressed = s.scalars(select(Suppression)).one()
        assert s.scalars(select(Enrolment.status)).all() == ["exited", "exited"]
    assert (suppressed.channel, suppressed.address) == ("email", ANA)
    assert suppressed.reason == "unsubscribed from all emails (link in a webinars email)"
    token = link.removeprefix("/u/")
    assert [(kind, key) for kind, _, key in _events(nurture)] == [
        ("topic_unsubscribed", f"unsubscribe-topic:{token}"),
        ("unsubscribed", f"unsubscribe:{token}"),
    ]
    assert _later(nurture, clock) == {}  # both sequences ended: nothing more is planned


def test_a_link_from_before_topics_leaves_the_topic_its_sequence_sends_under(
    client: TestClient, nurture: App, clock: FrozenClock
) -> None:
    legacy = make_token(SECRET, _lead(nurture).id, "webinar-invites")  # named the sequence

    client.post(f"/u/{legacy}", content=ONE_CLICK, headers=FORM)

    with nurture.sessions() as s:
        assert s.scalars(select(TopicOptOut.topic)).all() == ["webinars"]
    assert _later(nurture, clock)["demo_invite"] == ("skipped", "unsubscribed from topic webinars")


def test_a_link_to_a_removed_sequence_whose_name_is_no_topic_leaves_the_default_topic(
    client: TestClient, nurture: App
) -> None:
    legacy = make_token(SECRET, _lead(nurture).id, "Old_Newsletter")

    response = client.post(f"/u/{legacy}", content=ONE_CLICK, headers=FORM)

    assert response.status_code == 200
    assert "You left marketing" in response.text
    with nurture.sessions() as s:
        assert s.scalars(select(TopicOptOut.topic)).all() == ["marketing"]


def test_a_sequence_without_a_topic_sends_under_the_marketing_topic(
    db: Engine, clock: FrozenClock, tmp_path: Path
) -> None:
    app = _app(db, clock, tmp_path, {"plain.yml": PLAIN, "webinars.yml": WEBINARS})
    with app.sessions.begin() as s:
        track(s, app.rt, {"email": ANA}, "form_submitted")
    _send_due(app)
    token = _link(app, "welcome").removeprefix("/u/")
    assert read_token(SECRET, token) == (_lead(app).id, "marketing")
    page = TestClient(create_api(app, api_keys=[KEY], environ={})).get(f"/u/{token}")
    assert "<strong>marketing</strong>" in page.text


def test_a_put_on_the_unsubscribe_link_is_405_naming_get_and_post(
    client: TestClient, nurture: App
) -> None:
    link = _link(nurture, "welcome")

    for method in ("PUT", "DELETE", "PATCH"):
        response = client.request(method, link, headers={"Authorization": ""})
        assert response.status_code == 405
        assert response.headers["Allow"] == "GET, POST"
    assert _events(nurture) == []


def test_the_lead_api_shows_suppressions_and_unsubscribed_topics(
    client: TestClient, nurture: App
) -> None:
    client.post(_link(nurture, "welcome"), content=ONE_CLICK, headers=FORM)
    client.post(_link(nurture, "whats_new"), content=b"choice=all", headers=FORM)

    response = client.get(f"/v1/leads/{ANA}", headers={"Authorization": f"Bearer {KEY}"})

    assert response.status_code == 200, response.text
    detail = response.json()
    assert [(s["channel"], s["address"], s["reason"]) for s in detail["suppressions"]] == [
        ("email", ANA, "unsubscribed from all emails (link in a webinars email)")
    ]
    assert [(t["topic"], t["source"]) for t in detail["unsubscribed_topics"]] == [
        ("product-news", "unsubscribe")
    ]
    assert detail["lead"]["email_consent"] is False


def test_an_api_event_leaves_a_topic_and_one_without_a_topic_is_refused(
    client: TestClient, nurture: App, clock: FrozenClock
) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    event = {"lead": {"email": ANA}, "type": "topic_unsubscribed"}

    refused = client.post(
        "/v1/events", json={**event, "properties": {"topic": "Webinars!"}}, headers=auth
    )
    left = client.post(
        "/v1/events", json={**event, "properties": {"topic": "webinars"}}, headers=auth
    )

    assert refused.status_code == 422
    assert "needs a topic property" in refused.json()["detail"][0]["msg"]
    assert left.status_code == 200, left.text
    assert [(kind, props) for kind, props, _ in _events(nurture)] == [
        ("topic_unsubscribed", {"topic": "webinars"})
    ]
    assert _later(nurture, clock)["demo_invite"] == ("skipped", "unsubscribed from topic webinars")
