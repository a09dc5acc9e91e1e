"""Following a tracked link through the API on SQLite and PostgreSQL: one `email_clicked` on the
right lead, scored like a provider's click, then a redirect to exactly where the email pointed;
forged or altered links are refused and go nowhere."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete, func, select
from sqlalchemy import event as sa_event
from sqlalchemy.exc import OperationalError

from channels.base import EMAIL, DeliveryEvent
from channels.outbox import OutboxChannel
from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.feedback import record_delivery_event
from engine.delivery.links import click_url
from engine.delivery.sending import send_delivery
from engine.funnel.service import Outcome, track
from engine.http.api import create_api
from engine.models import Delivery, Event, Lead, ScoreEntry
from engine.read.stats import funnel
from engine.read.variants import step_outcomes
from engine.runner.inline import run_due
from engine.signing import b64, read_lead_token
from engine.workflow.spec import Metric
from tests.apps import outbox_app
from tests.engine.tracked import tracked_workflows

KEY = "clicks-key-0123456789abcdef-0123456789"
SECRET = "clicks-test-secret"
PUBLIC = "https://nurture.acme.test"
SITE = "https://acme-analytics.example"
START_URL = f"{SITE}/start"
ANA = "ana@northwind.test"
NO_KEY = {"Authorization": ""}
# The welcome email (its link to SITE/start) as one of two variants, so the experiments'
# `clicked` metric has a send to count.
VARIANTS = '[{id: plain}, {id: named, subject: "Hello {{ lead.first_name }}"}]'


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    """Ana signed up and the news sequence sent her its welcome email, links tracked."""
    return _sent(db, clock, tmp_path, SITE)


def _sent(db: Engine, clock: FrozenClock, tmp_path: Path, sites: str) -> App:
    """The app of `nurture`, with NURTURE_SITE_ORIGINS set to `sites`."""
    app = outbox_app(
        db,
        clock,
        tmp_path,
        tracked_workflows(tmp_path / "workflows", VARIANTS),
        NURTURE_PUBLIC_URL=PUBLIC,
        NURTURE_SECRET_KEY=SECRET,
        NURTURE_SITE_ORIGINS=sites,
    )
    with app.sessions.begin() as s:
        track(s, app.rt, {"email": ANA, "first_name": "Ana"}, "form_submitted")
    run_due(app.sessions, app.rt)
    assert send_delivery(app, _delivery(app).id) == "sent"
    return app


@pytest.fixture
def client(nurture: App) -> TestClient:
    return TestClient(create_api(nurture, api_keys=[KEY], environ={}), follow_redirects=False)


def _delivery(app: App) -> Delivery:
    with app.sessions() as s:
        return s.scalars(select(Delivery)).one()


def _lead(app: App) -> Lead:
    with app.sessions() as s:
        return s.scalars(select(Lead).where(Lead.email == ANA)).one()


def _clicks(app: App) -> list[Event]:
    with app.sessions() as s:
        return list(s.scalars(select(Event).where(Event.type == "email_clicked")))


def _tracked_link(app: App) -> str:
    """The path of the tracked link in the HTML of the email the outbox wrote."""
    outbox = app.channels[EMAIL]
    assert isinstance(outbox, OutboxChannel)
    raw = (outbox.directory / "email" / f"{_delivery(app).id}.eml").read_text()
    unfolded = raw.replace("=\n", "").replace("=3D", "=")  # quoted-printable, enough for links
    found = re.findall(re.escape(PUBLIC) + r"(/c/[A-Za-z0-9_.-]+)", unfolded)
    assert len(set(found)) == 1, found  # the start link, in the HTML and the text part
    return str(found[0])


def _follow(client: TestClient, path: str, method: str = "GET") -> Any:
    return client.request(method, path, headers=NO_KEY)


def test_a_click_is_recorded_on_the_lead_with_its_step_and_url_then_redirected(
    client: TestClient, nurture: App, clock: FrozenClock
) -> None:
    delivery = _delivery(nurture)
    before = _lead(nurture).engagement

    response = _follow(client, _tracked_link(nurture))

    assert response.status_code == 302
    assert response.headers["Cache-Control"] == "no-store"
    location = urlsplit(response.headers["Location"])
    assert location._replace(query="").geturl() == START_URL
    (token,) = parse_qs(location.query)["nurture_lead"]
    assert read_lead_token(SECRET, token, clock.now()) == _lead(nurture).id
    (click,) = _clicks(nurture)
    assert (click.lead_id, click.source) == (_lead(nurture).id, "click")
    assert click.properties == {
        "provider": "nurture",
        "delivery_id": delivery.id,
        "sequence": "news",
        "template": "welcome",
        "milestone": "hello",
        "step": "email:welcome",
        "url": START_URL,
        "link": 0,
    }
    with nurture.sessions() as s:  # scored by scoring.yml's email_click rule
        rules = list(s.scalars(select(ScoreEntry.rule).where(ScoreEntry.event_id == click.id)))
    assert rules == ["email_click"]
    assert _lead(nurture).engagement == before + 6


def test_a_tracked_click_counts_for_the_step_and_its_variant_like_a_providers_click(
    client: TestClient, nurture: App, clock: FrozenClock
) -> None:
    _follow(client, _tracked_link(nurture))
    delivery = _delivery(nurture)

    with nurture.sessions() as s:
        sequence = nurture.rt.workflows.sequences["news"]
        (step,) = sequence.milestones[0].steps
        later = clock.now() + timedelta(days=2)
        names = sequence.known_as("hello", step)  # type: ignore[arg-type]
        outcomes = step_outcomes(s, "news", names, Metric.CLICKED, timedelta(days=1), later)
        stats = funnel(s, nurture.rt)
    assert dict(outcomes.matured) == {str(delivery.variant): [True]}
    assert stats["sequences"]["news"]["steps"][0]["clicked"] == 1


def test_the_providers_own_click_on_a_tracked_link_and_ours_are_one_click(
    client: TestClient, nurture: App, clock: FrozenClock
) -> None:
    link, delivery = _tracked_link(nurture), _delivery(nurture)
    provider_click = DeliveryEvent(
        "clicked", EMAIL, "sendgrid", "sg-evt-1", clock.now(), delivery.id, None, ANA,
        url=f"{PUBLIC}{link}",
    )
    with nurture.sessions.begin() as s:
        record_delivery_event(s, nurture.rt, provider_click)
    assert _follow(client, link).status_code == 302

    (click,) = _clicks(nurture)
    assert click.properties["provider"] == "sendgrid"


def test_clicking_a_link_again_counts_once_and_another_link_of_the_email_counts_too(
    client: TestClient, nurture: App
) -> None:
    path = _tracked_link(nurture)
    another = click_url(nurture.settings, _delivery(nurture).id, 1, f"{SITE}/pricing")

    answers = [_follow(client, p).status_code for p in (path, path, path, another)]

    assert answers == [302, 302, 302, 302]
    assert sorted(e.properties["link"] for e in _clicks(nurture)) == [0, 1]


def test_a_head_request_redirects_and_records_nothing(client: TestClient, nurture: App) -> None:
    response = _follow(client, _tracked_link(nurture), "HEAD")

    assert (response.status_code, response.headers["Location"]) == (302, START_URL)
    assert _clicks(nurture) == []


def test_a_forged_truncated_or_altered_link_is_refused_redirects_nowhere_and_records_nothing(
    client: TestClient, nurture: App
) -> None:
    genuine = _tracked_link(nurture)
    delivery, index, url, signature = genuine.removeprefix("/c/").split(".")
    evil = b64(b"https://evil.test/login")
    forged = click_url(replace(nurture.settings, secret_key="another"), delivery, 0, START_URL)
    for path in (
        f"/c/{delivery}.{index}.{evil}.{signature}",  # another URL under the same signature
        f"/c/{delivery}.1.{url}.{signature}",  # another link number
        genuine[:-3],  # truncated
        f"/c/{delivery}.{index}.{url}",  # no signature
        "/c/" + forged.split("/c/")[1],  # signed with another secret
        "/c/https%3A%2F%2Fevil.test%2F",
    ):
        response = _follow(client, path)
        assert response.status_code == 404, path
        assert "Location" not in response.headers
        assert "evil" not in response.text and "http" not in response.text
    assert _clicks(nurture) == []


def test_the_lead_token_is_added_only_for_the_websites_own_origins(
    client: TestClient, nurture: App
) -> None:
    delivery_id = _delivery(nurture).id
    elsewhere = "https://partner.test/webinar?id=7#agenda"
    lookalike = f"{SITE}.partner.test/x"
    to_site = f"{SITE}:443/docs?x=1#top"

    locations = [
        _follow(client, click_url(nurture.settings, delivery_id, n, url)).headers["Location"]
        for n, url in enumerate((elsewhere, lookalike, to_site), start=1)
    ]

    assert locations[:2] == [elsewhere, lookalike]
    assert re.fullmatch(
        re.escape(f"{SITE}:443/docs?x=1&nurture_lead=") + r"[\w.-]+#top", locations[2]
    )


def test_a_site_configured_with_its_default_port_gets_the_lead_token_on_links_without_it(
    db: Engine, clock: FrozenClock, tmp_path: Path
) -> None:
    app = _sent(db, clock, tmp_path, f"{SITE}:443")
    client = TestClient(create_api(app, api_keys=[KEY], environ={}), follow_redirects=False)

    location = urlsplit(_follow(client, _tracked_link(app)).headers["Location"])

    assert location._replace(query="").geturl() == START_URL
    (token,) = parse_qs(location.query)["nurture_lead"]
    assert read_lead_token(SECRET, token, clock.now()) == _lead(app).id


def test_a_click_for_a_lead_erased_or_a_delivery_gone_still_redirects_and_records_nothing(
    client: TestClient, nurture: App, clock: FrozenClock
) -> None:
    path = _tracked_link(nurture)
    with nurture.sessions.begin() as s:
        s.get_one(Lead, _lead(nurture).id).erased_at = clock.now()

    erased = _follow(client, path)

    with nurture.sessions.begin() as s:
        s.execute(delete(Delivery))
    gone = _follow(client, path)

    assert [(r.status_code, r.headers["Location"]) for r in (erased, gone)] == [
        (302, START_URL),
        (302, START_URL),
    ]
    assert _clicks(nurture) == []


class _BrokenQueue:
    """Workers whose broker is down: every follow-up enqueue raises."""

    broker: dramatiq.Broker = StubBroker()

    def follow_up(self, outcome: Outcome) -> None:
        raise ConnectionError("redis is down")

    def start_job(self, job_id: str) -> None:
        raise ConnectionError("redis is down")


def test_a_click_is_recorded_even_when_its_follow_up_work_cannot_be_enqueued(
    nurture: App,
) -> None:
    client = TestClient(
        create_api(nurture, _BrokenQueue(), api_keys=[KEY], environ={}), follow_redirects=False
    )

    response = _follow(client, _tracked_link(nurture))

    assert response.status_code == 302
    assert len(_clicks(nurture)) == 1


def test_a_database_failure_still_takes_the_reader_to_the_page(
    client: TestClient, nurture: App, db: Engine
) -> None:
    def disk_full(connection: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO EVENTS"):
            raise OperationalError(statement, parameters, Exception("disk full"))

    sa_event.listen(db, "before_cursor_execute", disk_full)
    try:
        response = _follow(client, _tracked_link(nurture))
    finally:
        sa_event.remove(db, "before_cursor_execute", disk_full)

    assert (response.status_code, response.headers["Location"]) == (302, START_URL)
    with nurture.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 1  # the form only
