"""Template previews and a delivery's message over HTTP on SQLite and PostgreSQL: the lead's
data in every part, escaped in the text and in the sandboxed frame, SMS costs, problems as
4xx pages, and each delivery's message shown to its own lead only."""

from __future__ import annotations

import html
import re
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.sending import send_delivery
from engine.funnel.service import track, upsert_lead
from engine.http.api import create_api
from engine.models import Delivery, Lead
from engine.runner.inline import run_due
from tests.apps import ROOT, outbox_app

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    return outbox_app(db, clock, tmp_path, NURTURE_PUBLIC_URL="https://nurture.acme.test")


def _client(app: App) -> TestClient:
    api = create_api(app, None, api_keys=[], allow_no_auth=True, environ={})
    return TestClient(api, follow_redirects=False)


def _lead(app: App, email: str, first_name: str) -> int:
    with app.sessions.begin() as s:
        upsert_lead(s, app.rt, {"email": email, "first_name": first_name, "company": "Initech"})
    with app.sessions() as s:
        return s.scalars(select(Lead.id).where(Lead.email == email)).one()


def _srcdoc(page: str) -> str:
    """The document the sandboxed frame shows, as the browser reads it from the attribute."""
    found = re.search(
        r'<iframe class="message-frame" id="html-part" sandbox="" srcdoc="([^"]*)"', page
    )
    assert found, "the page has no sandboxed frame with a srcdoc"
    return html.unescape(found.group(1))


def _sent_welcome(app: App, email: str) -> tuple[int, Delivery]:
    """A lead who signed up and got the welcome email through the real send path."""
    with app.sessions.begin() as s:
        track(s, app.rt, {"email": email, "first_name": "Kim"}, "form_submitted")
    run_due(app.sessions, app.rt)
    with app.sessions() as s:
        lead_id = s.scalars(select(Lead.id).where(Lead.email == email)).one()
        (delivery,) = s.scalars(select(Delivery).where(Delivery.lead_id == lead_id))
    assert send_delivery(app, delivery.id) == "sent"
    with app.sessions() as s:
        return lead_id, s.get_one(Delivery, delivery.id)


def _send_due(app: App) -> None:
    """Advance the journeys and send every delivery due now, as the workers would."""
    run_due(app.sessions, app.rt)
    with app.sessions() as s:
        due = list(s.scalars(select(Delivery.id).where(Delivery.status == "planned")))
    for delivery_id in due:
        send_delivery(app, delivery_id)


def test_the_templates_page_lists_every_template_with_a_preview_link(nurture: App) -> None:
    page = _client(nurture).get("/templates")
    assert page.status_code == 200
    assert '<a href="/templates" aria-current="page">Templates</a>' in page.text
    for channel, name in (("email", "welcome"), ("email", "whats_new"), ("sms", "demo_nudge")):
        assert f'href="/templates/preview?channel={channel}&amp;template={name}"' in page.text


def test_a_template_previewed_for_a_lead_shows_the_lead_by_name(nurture: App) -> None:
    lead_id = _lead(nurture, "ana@initech.test", "Ana")
    client = _client(nurture)
    page = client.get("/templates/preview?template=welcome&channel=email&lead=ana@initech.test")
    assert page.status_code == 200, page.text
    assert 'id="subject">Welcome to Acme Analytics, Ana<' in page.text
    assert "Hi Ana," in page.text.split('id="text-part">')[1]
    assert "Hi Ana," in _srcdoc(page.text)
    assert f'<a href="/leads/{lead_id}">Ana</a>' in page.text
    by_id = client.get(f"/templates/preview?template=welcome&lead={lead_id}")
    assert 'id="subject">Welcome to Acme Analytics, Ana<' in by_id.text
    sample = client.get("/templates/preview?template=welcome&channel=email&lead=")
    assert 'id="subject">Welcome to Acme Analytics, Jordan<' in sample.text


def test_a_lead_named_with_markup_stays_text_in_the_text_part_and_the_frame(
    nurture: App,
) -> None:
    _lead(nurture, "vp@x.test", HOSTILE)
    page = _client(nurture).get("/templates/preview?template=welcome&lead=vp@x.test")
    assert page.status_code == 200, page.text
    assert HOSTILE not in page.text
    text = page.text.split('id="text-part">')[1].split("</pre>")[0]
    assert f"Hi {ESCAPED}," in text
    frame = _srcdoc(page.text)
    assert HOSTILE not in frame and f"Hi {ESCAPED}," in frame
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "style-src 'self' 'unsafe-inline';" in policy
    elsewhere = _client(nurture).get("/templates").headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in elsewhere


def test_an_sms_preview_names_its_encoding_and_segments(nurture: App) -> None:
    client = _client(nurture)
    plain = client.get("/templates/preview?template=demo_nudge")
    assert plain.status_code == 200, plain.text
    assert 'id="sms-encoding">GSM-7<' in plain.text and 'id="sms-segments">1<' in plain.text
    assert "Reply STOP to opt out." in plain.text
    _lead(nurture, "lucja@initech.test", "Łucja Анна")
    wide = client.get("/templates/preview?template=demo_nudge&channel=sms&lead=lucja@initech.test")
    assert "Hi Łucja Анна," in wide.text
    assert 'id="sms-encoding">UCS-2<' in wide.text
    segments = re.search(r'id="sms-segments">(\d+)<', wide.text)
    assert segments and int(segments.group(1)) > 1


def test_an_unknown_template_or_lead_is_a_4xx_page_naming_the_problem(
    db: Engine, clock: FrozenClock, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    (templates / "sms" / "nickname.j2").write_text("Hi {{ lead.nickname }}")
    client = _client(outbox_app(db, clock, tmp_path, NURTURE_TEMPLATES=str(templates)))
    cases = {
        "template=nope": (404, "no email or SMS template named &#39;nope&#39;"),
        "template=welcome&channel=sms": (404, "no sms template named &#39;welcome&#39;"),
        "template=welcome&channel=fax": (400, "channel: &#39;fax&#39; is not one of email, sms"),
        "template=welcome&lead=nobody@x.test": (404, "no lead with email &#39;nobody@x.test&#39;"),
        "template=nickname": (400, "&#39;lead&#39; has no attribute &#39;nickname&#39;"),
    }
    for query, (status, problem) in cases.items():
        page = client.get(f"/templates/preview?{query}")
        assert page.status_code == status, query
        assert 'role="alert"' in page.text and problem in page.text, (query, page.text)
    assert client.get("/templates/preview").headers["location"] == "/templates"


def test_a_deliverys_message_renders_for_its_lead_and_404s_for_another(nurture: App) -> None:
    lead_id, delivery = _sent_welcome(nurture, "kim@umbrella.test")
    other_id, _ = _sent_welcome(nurture, "lee@umbrella.test")
    client = _client(nurture)
    trace = client.get(f"/leads/{lead_id}").text
    link = f'href="/leads/{lead_id}/deliveries/{delivery.id}">message</a>'
    assert link in trace
    page = client.get(f"/leads/{lead_id}/deliveries/{delivery.id}")
    assert page.status_code == 200, page.text
    assert 'id="delivery-status">sent<' in page.text
    assert f'id="subject">{delivery.subject}<' in page.text
    assert delivery.subject == "Welcome to Acme Analytics, Kim"
    text = page.text.split('id="text-part">')[1]
    assert "https://nurture.acme.test/u/" in text, "the lead's own unsubscribe link"
    assert "Hi Kim," in _srcdoc(page.text)
    foreign = client.get(f"/leads/{other_id}/deliveries/{delivery.id}")
    assert foreign.status_code == 404 and 'role="alert"' in foreign.text
    assert "Hi Kim" not in foreign.text
    assert client.get(f"/leads/{lead_id}/deliveries/no-such-id").status_code == 404


def test_the_first_sms_delivery_shows_the_opt_out_line_it_went_out_with(
    nurture: App, clock: FrozenClock
) -> None:
    lead = {"email": "kim@umbrella.test", "phone": "+15005550009", "first_name": "Kim"}
    with nurture.sessions.begin() as s:
        track(s, nurture.rt, {**lead, "sms_consent": True}, "form_submitted")
    for days in (0, 2, 3):
        clock.advance(timedelta(days=days))
        _send_due(nurture)
    with nurture.sessions() as s:
        sms = s.scalars(select(Delivery).where(Delivery.channel == "sms")).one()
    assert sms.status == "sent"
    page = _client(nurture).get(f"/leads/{sms.lead_id}/deliveries/{sms.id}")
    assert page.status_code == 200, page.text
    body = page.text.split('id="sms-body">')[1].split("</pre>")[0]
    assert "Hi Kim" in body and body.endswith("Reply STOP to opt out.")
    assert 'id="sms-encoding">GSM-7<' in page.text
