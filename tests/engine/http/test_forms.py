"""Hosted forms on SQLite and PostgreSQL: the page escapes what it shows, a good post records
the form's event on the lead and stitches the visitor's earlier page views, bots and bad input
record nothing, and double opt-in gives email consent only after the confirmation link."""

from __future__ import annotations

import email
import re
import shutil
from datetime import timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import idna
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.pacing import LocalPacer
from engine.funnel.consents import confirm_token
from engine.funnel.service import upsert_lead
from engine.http.api import create_api
from engine.http.forms import forms_router
from engine.http.routes import FollowUps
from engine.http.throttle import Quota
from engine.models import (
    Consent,
    ConsentStatus,
    Event,
    Lead,
    Suppression,
    TopicOptOut,
    Visitor,
    VisitorEvent,
)
from engine.read.metrics import Metrics
from tests.apps import ROOT, outbox_app

SECRET = "forms-secret-0123456789abcdef-0123456789"
SITE = "https://www.acme.test"
VISITOR = "3f0c6a53-1b9e-4f7e-9a55-7d2f0c1e9b21"
HOSTILE = """
  hostile:
    title: "<script>alert('t')</script>"
    description: "<img src=x onerror=alert(1)>"
    fields:
      - {name: email, label: "<b>Email</b>", required: true}
      - {name: plan, label: Plan, type: select, choices: ["<i>pro</i>", basic]}
    consent: {text: "I agree to <u>this</u>", required: true}
"""


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    workflows = tmp_path / "workflows"
    shutil.copytree(ROOT / "workflows", workflows)
    with (workflows / "forms.yml").open("a") as forms:
        forms.write(HOSTILE)
    return outbox_app(
        db, clock, tmp_path, workflows, NURTURE_SECRET_KEY=SECRET, NURTURE_SITE_ORIGINS=SITE
    )


@pytest.fixture
def client(nurture: App) -> TestClient:
    return TestClient(create_api(nurture, None, api_keys=["k" * 40], environ={}))


def _rendered(page: str) -> str:
    found = re.search(r'name="nurture_rendered" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def _fill(client: TestClient, clock: FrozenClock, name: str, **fields: str) -> Any:
    """Open the hosted form, wait like a person, post it back with `fields`."""
    token = _rendered(client.get(f"/f/{name}").text)
    clock.advance(timedelta(seconds=10))
    data = {"nurture_rendered": token, "fax": ""} | fields
    return client.post(f"/f/{name}", data=data, follow_redirects=False)


def _all(app: App, model: Any) -> list[Any]:
    with app.sessions() as session:
        return list(session.scalars(select(model).order_by(model.id)))


def _outbox(tmp_path: Path) -> list[Message]:
    folder = tmp_path / "outbox" / "email"
    files = sorted(folder.glob("*.eml")) if folder.is_dir() else []
    return [email.message_from_string(path.read_text("utf-8")) for path in files]  # SMTPUTF8


def _text(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode()
    raise AssertionError("no text part")


def test_the_hosted_form_shows_every_field_and_escapes_everything(client: TestClient) -> None:
    page = client.get('/f/hostile?visitor=<x>&page="><script>')
    assert page.status_code == 200
    html = page.text
    for raw in ("<script>alert", "<img src=x", "<b>Email", "<i>pro", "<u>this", '"><script>'):
        assert raw not in html
    assert "&lt;script&gt;alert(&#x27;t&#x27;)&lt;/script&gt;" in html
    assert 'name="email"' in html and 'name="plan"' in html and 'name="consent"' in html
    assert '<option value="&lt;i&gt;pro&lt;/i&gt;">' in html
    assert 'name="nurture_visitor" value=""' in html  # not a visitor id: dropped
    assert "script-src" not in page.headers["content-security-policy"]
    assert client.get("/f/nope").status_code == 404


def test_a_good_post_records_the_event_and_stitches_the_visitors_page_views_in_order(
    nurture: App, client: TestClient, clock: FrozenClock
) -> None:
    start = clock.now()
    with nurture.sessions.begin() as session:
        session.add(Visitor(id=VISITOR, first_seen_at=start, last_seen_at=start))
        session.flush()
        for minutes, path in ((30, "/pricing"), (20, "/docs")):
            session.add(
                VisitorEvent(
                    visitor_id=VISITOR,
                    type="page_viewed",
                    properties={"url": f"{SITE}{path}"},
                    occurred_at=start - timedelta(minutes=minutes),
                    received_at=start,
                    idempotency_key=f"t:{path}",
                    source="snippet",
                )
            )
    answer = _fill(
        client,
        clock,
        "demo-request",
        email="Ana@Northwind.test",
        first_name="Ana",
        company="Northwind",
        industry="saas",
        nurture_visitor=VISITOR,
        nurture_page=f"{SITE}/demo",
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "https://acme-analytics.example/thanks"
    (lead,) = _all(nurture, Lead)
    assert (lead.email, lead.company, lead.fields["industry"]) == (
        "Ana@northwind.test",  # the mailbox as typed
        "Northwind",
        "saas",
    )
    events = _all(nurture, Event)
    assert [
        (e.type, e.properties.get("url")) for e in sorted(events, key=lambda e: e.occurred_at)
    ] == [
        ("page_viewed", f"{SITE}/pricing"),
        ("page_viewed", f"{SITE}/docs"),
        ("demo_requested", f"{SITE}/demo"),
    ]
    assert {e.lead_id for e in events} == {lead.id}
    assert _all(nurture, VisitorEvent) == []
    assert _all(nurture, Consent) == []  # this form asks for no consent


def test_a_filled_honeypot_or_a_form_sent_too_fast_records_nothing(
    nurture: App, client: TestClient, clock: FrozenClock
) -> None:
    fields = {"email": "bot@spam.test", "first_name": "B", "company": "C"}
    trapped = _fill(client, clock, "demo-request", fax="555-0100", **fields)
    assert trapped.status_code == 303  # the bot learns nothing
    token = _rendered(client.get("/f/demo-request").text)
    quick = client.post("/f/demo-request", data={"nurture_rendered": token, **fields})
    assert quick.status_code == 422 and "That was quick" in quick.text
    forged = client.post("/f/demo-request", data={"nurture_rendered": token + "x", **fields})
    assert forged.status_code == 422
    assert _all(nurture, Lead) == [] and _all(nurture, Event) == []


def test_bad_fields_get_their_errors_back_as_html_with_the_values_kept_or_as_json(
    nurture: App, client: TestClient, clock: FrozenClock
) -> None:
    page = _fill(
        client, clock, "demo-request", email="not-an-email", first_name="Ana<", industry="golf"
    )
    assert page.status_code == 422
    assert 'id="email-error">enter an email address' in page.text
    assert 'id="company-error">Company is required' in page.text
    assert 'id="industry-error">choose one of' in page.text
    assert 'value="Ana&lt;"' in page.text  # kept, escaped
    answer = client.post("/f/newsletter", json={"email": "ana@northwind.test"})
    assert answer.status_code == 422
    assert answer.json() == {"errors": {"consent": "please tick the box to agree"}}
    assert _all(nurture, Lead) == []


def test_an_address_posting_too_fast_gets_429(nurture: App) -> None:
    follow = FollowUps(None, Metrics(nurture.sessions, nurture.rt.clock, None))
    api = FastAPI()
    # Four posts at once, then one every 100 s: however slow the machine, the fifth is refused.
    api.include_router(forms_router(nurture, follow, None, LocalPacer(), Quota(0.01, 3)))
    client = TestClient(api)
    answers = [client.post("/f/demo-request", json={}).status_code for _ in range(5)]
    assert answers == [422] * 4 + [429]


def test_only_site_origins_get_cors_and_other_origins_are_refused(
    nurture: App, client: TestClient
) -> None:
    body = {"email": "ana@northwind.test", "first_name": "Ana", "company": "Northwind"}
    good = client.post("/f/demo-request", json=body, headers={"Origin": SITE})
    assert good.status_code == 200 and good.json()["ok"] is True
    assert good.headers["access-control-allow-origin"] == SITE
    preflight = client.options("/f/demo-request", headers={"Origin": SITE})
    assert preflight.status_code == 204
    evil = client.post("/f/demo-request", json=body, headers={"Origin": "https://evil.test"})
    assert evil.status_code == 403 and "access-control-allow-origin" not in evil.headers
    bad_preflight = client.options("/f/demo-request", headers={"Origin": "https://evil.test"})
    assert bad_preflight.status_code == 403
    assert len(_all(nurture, Event)) == 1


def test_origins_configured_with_their_default_port_are_the_origins_browsers_send(
    db: Engine, clock: FrozenClock, tmp_path: Path
) -> None:
    app = outbox_app(
        db,
        clock,
        tmp_path,
        ROOT / "workflows",
        NURTURE_SECRET_KEY=SECRET,
        NURTURE_SITE_ORIGINS=f"{SITE}:443",
        NURTURE_PUBLIC_URL="https://nurture.acme.test:443",
    )
    client = TestClient(create_api(app, None, api_keys=["k" * 40], environ={}))
    body = {"email": "ana@northwind.test", "first_name": "Ana", "company": "Northwind"}

    site = client.post("/f/demo-request", json=body, headers={"Origin": SITE})
    preflight = client.options("/f/demo-request", headers={"Origin": SITE})
    own = client.post(
        "/f/demo-request",
        json=body | {"email": "ben@northwind.test"},
        headers={"Origin": "https://nurture.acme.test"},
    )

    assert site.status_code == 200 and site.headers["access-control-allow-origin"] == SITE
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == SITE
    assert own.status_code == 200 and "access-control-allow-origin" not in own.headers
    assert len(_all(app, Event)) == 2


def test_double_opt_in_gives_email_consent_only_after_the_confirmation_link(
    nurture: App, client: TestClient, clock: FrozenClock, tmp_path: Path
) -> None:
    answer = _fill(
        client,
        clock,
        "newsletter",
        email="ana@northwind.test",
        first_name="Ana",
        consent="yes",
        nurture_page=f"{SITE}/blog",
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/f/newsletter/thanks"
    (lead,) = _all(nurture, Lead)
    assert lead.email_consent is False
    (consent,) = _all(nurture, Consent)
    assert consent.status == ConsentStatus.PENDING
    assert consent.text == nurture.rt.workflows.forms["newsletter"].consent.text  # type: ignore[union-attr]
    assert (consent.ip, consent.page_url, consent.topic) == (
        "testclient",
        f"{SITE}/blog",
        "newsletter",
    )
    assert consent.requested_at == consent.confirmation_sent_at
    (message,) = _outbox(tmp_path)
    assert message["To"].endswith("<ana@northwind.test>") or "ana@northwind.test" in message["To"]
    link = re.search(r"http\S+/f/confirm/\S+", _text(message))
    assert link is not None
    path = "/f/confirm/" + link.group(0).rsplit("/f/confirm/", 1)[1]
    assert "Yes, subscribe me" in client.get(path).text
    assert _all(nurture, Lead)[0].email_consent is False  # opening the link changes nothing
    clock.advance(timedelta(hours=2))
    done = client.post(path)
    assert done.status_code == 200 and "You are subscribed" in done.text
    (lead,) = _all(nurture, Lead)
    assert lead.email_consent is True
    (consent,) = _all(nurture, Consent)
    assert consent.status == ConsentStatus.CONFIRMED
    assert consent.confirmed_at == clock.now() and consent.confirm_ip == "testclient"
    assert [e.type for e in _all(nurture, Event)] == ["newsletter_subscribed", "email_confirmed"]
    assert client.post(path).status_code == 200  # a second click changes nothing
    assert [e.type for e in _all(nurture, Event)] == ["newsletter_subscribed", "email_confirmed"]
    assert len(_outbox(tmp_path)) == 1
    # The lead's page in the API shows the proof.
    key = {"Authorization": f"Bearer {'k' * 40}"}
    (proof,) = client.get("/v1/leads/ana@northwind.test", headers=key).json()["consents"]
    assert (proof["form"], proof["status"]) == ("newsletter", "confirmed")
    assert proof["ip"] == "testclient"
    assert proof["text"] == consent.text and proof["page_url"] == f"{SITE}/blog"


def test_an_unsubscribed_lead_asking_again_is_back_only_after_confirming(
    nurture: App, client: TestClient, clock: FrozenClock, tmp_path: Path
) -> None:
    now = clock.now()
    with nurture.sessions.begin() as session:
        lead = Lead(email="ana@northwind.test", email_consent=False, created_at=now, updated_at=now)
        session.add(lead)
        session.flush()
        session.add(
            TopicOptOut(lead_id=lead.id, topic="newsletter", source="unsubscribe", created_at=now)
        )
        session.add(
            Suppression(
                channel="email",
                address="ana@northwind.test",
                reason="unsubscribed from all emails",
                created_at=now,
            )
        )
    _fill(client, clock, "newsletter", email="ana@northwind.test", consent="yes")
    (message,) = _outbox(tmp_path)
    link = re.search(r"/f/confirm/\S+", _text(message))
    assert link is not None
    assert client.post(link.group(0)).status_code == 200
    assert _all(nurture, Lead)[0].email_consent is True
    assert _all(nurture, TopicOptOut) == [] and _all(nurture, Suppression) == []


def test_a_bounced_address_gets_no_confirmation_and_an_existing_subscriber_none_either(
    nurture: App, client: TestClient, clock: FrozenClock, tmp_path: Path
) -> None:
    now = clock.now()
    with nurture.sessions.begin() as session:
        session.add(Lead(email="kept@northwind.test", created_at=now, updated_at=now))
        session.add(
            Suppression(
                channel="email",
                address="gone@northwind.test",
                reason="sendgrid bounced: 550",
                created_at=now,
            )
        )
    _fill(client, clock, "newsletter", email="gone@northwind.test", consent="yes")
    _fill(client, clock, "newsletter", email="kept@northwind.test", consent="yes")
    assert [c.status for c in _all(nurture, Consent)] == [
        ConsentStatus.BLOCKED,
        ConsentStatus.EXISTING,
    ]
    assert _outbox(tmp_path) == []


def test_a_forged_or_expired_confirmation_link_is_refused(
    nurture: App, client: TestClient, clock: FrozenClock, tmp_path: Path
) -> None:
    _fill(client, clock, "newsletter", email="ana@northwind.test", consent="yes")
    (consent,) = _all(nurture, Consent)
    forged = confirm_token("another-secret-0123456789abcdef-01234567", consent.id, clock.now())
    assert client.post(f"/f/confirm/{forged}").status_code == 404
    assert client.get(f"/f/confirm/{forged}").status_code == 404
    old = confirm_token(SECRET, consent.id, clock.now())
    clock.advance(timedelta(days=8))
    assert client.post(f"/f/confirm/{old}").status_code == 404
    assert _all(nurture, Lead)[0].email_consent is False
    assert _all(nurture, Consent)[0].status == ConsentStatus.PENDING


def test_a_post_naming_a_known_address_fills_only_empty_fields_and_never_says_whose_phone(
    nurture: App, client: TestClient, clock: FrozenClock
) -> None:
    with nurture.sessions.begin() as s:
        upsert_lead(s, nurture.rt, {"email": "ana@northwind.test", "first_name": "Ana",
                                    "phone": "+15005550001"})  # fmt: skip
        upsert_lead(s, nurture.rt, {"email": "ben@contoso.test", "phone": "+15005550002"})
    hijack = {"email": "ana@northwind.test", "first_name": "Mallory", "company": "Evil Inc",
              "phone": "+15005550666"}  # fmt: skip
    assert _fill(client, clock, "demo-request", **hijack).status_code == 303
    squat = {"email": "new@x.test", "first_name": "Neo", "company": "X", "phone": "+15005550002"}
    answer = client.post("/f/demo-request", json=squat)
    assert answer.status_code == 200, answer.text
    assert "+15005550002" not in answer.text

    with nurture.sessions() as s:
        ana = s.scalars(select(Lead).where(Lead.email == "ana@northwind.test")).one()
        new = s.scalars(select(Lead).where(Lead.email == "new@x.test")).one()
    assert (ana.first_name, ana.phone, ana.company) == ("Ana", "+15005550001", "Evil Inc")
    assert (new.first_name, new.phone) == ("Neo", None)  # another lead's phone left out


def test_one_address_gets_at_most_three_confirmations_a_week(
    nurture: App, client: TestClient, clock: FrozenClock, tmp_path: Path
) -> None:
    for _ in range(5):
        _fill(client, clock, "newsletter", email="target@x.test", consent="yes")
        clock.advance(timedelta(hours=2))
    assert len(_outbox(tmp_path)) == 3


def test_a_body_nested_too_deep_is_a_422(client: TestClient) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    json_type = {"Content-Type": "application/json"}
    answer = client.post("/f/newsletter", content=deep, headers=json_type)
    assert answer.status_code == 422


def test_a_confirmation_goes_to_an_idn_domain_in_ascii_and_to_a_mailbox_in_any_script(
    nurture: App, client: TestClient, clock: FrozenClock, tmp_path: Path
) -> None:
    _fill(client, clock, "newsletter", email="Zofia@Wiśniowy.test", consent="yes")
    (message,) = _outbox(tmp_path)
    assert message["To"] == "Zofia@" + idna.encode("wiśniowy.test").decode()
    assert [lead.email for lead in _all(nurture, Lead)] == ["Zofia@wiśniowy.test"]

    clock.advance(timedelta(minutes=1))
    answer = _fill(client, clock, "newsletter", email="дмитрий@сталь.test", consent="yes")
    assert answer.status_code == 303
    assert sorted(m["To"] for m in _outbox(tmp_path))[-1] == "дмитрий@сталь.test"  # SMTPUTF8
