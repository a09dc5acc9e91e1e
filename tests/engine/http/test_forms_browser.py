"""A hosted double opt-in form in real headless Chromium: a person fills it in, the lead has no
email consent until the link in the confirmation email is opened and its button clicked."""

from __future__ import annotations

import email
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser
from sqlalchemy import Engine, select

from engine.app import App
from engine.clock import SystemClock
from engine.http.api import create_api
from engine.http.forms import MIN_FILL
from engine.models import Consent, ConsentStatus, Event, Lead
from tests.apps import ROOT, outbox_app, serving

SECRET = "forms-browser-secret-0123456789abcdef-0123"

pytestmark = pytest.mark.parametrize("db", ["sqlite"], indirect=True)


@pytest.fixture
def served(db: Engine, tmp_path: Path) -> Iterator[tuple[App, str]]:
    """nurture on 127.0.0.1 with the shipped forms; its public URL is where it listens."""
    app = outbox_app(db, SystemClock(), tmp_path, ROOT / "workflows", NURTURE_SECRET_KEY=SECRET)
    with serving(create_api(app, None, allow_no_auth=True, environ={})) as url:
        yield app, url


def test_a_person_subscribes_in_chromium_and_has_consent_only_after_confirming(
    browser: Browser, served: tuple[App, str], tmp_path: Path
) -> None:
    app, url = served
    page = browser.new_context().new_page()
    page.goto(f"{url}/f/newsletter")
    page.fill("#email", "ana@northwind.test")
    page.fill("#first_name", "Ana")
    page.check('input[name="consent"]')
    time.sleep(MIN_FILL.total_seconds() + 0.5)  # a person takes a moment
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/f/newsletter/thanks")
    assert "check your inbox" in page.content()
    with app.sessions() as session:
        lead = session.scalars(select(Lead)).one()
        assert lead.email_consent is False
    (sent,) = sorted((tmp_path / "outbox" / "email").glob("*.eml"))
    message = email.message_from_bytes(sent.read_bytes())
    text = next(p for p in message.walk() if p.get_content_type() == "text/plain")
    payload = text.get_payload(decode=True)
    assert isinstance(payload, bytes)
    found = re.search(r"/f/confirm/\S+", payload.decode())
    assert found is not None
    page.goto(url + found.group(0))
    page.click("button[type=submit]")
    page.wait_for_selector("text=You are subscribed")
    with app.sessions() as session:
        lead = session.scalars(select(Lead)).one()
        consent = session.scalars(select(Consent)).one()
        events = [e.type for e in session.scalars(select(Event).order_by(Event.id))]
    assert lead.email_consent is True
    assert consent.status == ConsentStatus.CONFIRMED and consent.confirm_ip == "127.0.0.1"
    assert consent.user_agent and "Chrome" in consent.user_agent
    assert events == ["newsletter_subscribed", "email_confirmed"]
