"""The tracking snippet in real headless Chromium: a site on one origin loads /t.js from nurture
on another; page views before and after the visitor is identified end up on one lead, scored
once, in order; Do-Not-Track, Global Privacy Control and a missing consent stop collection."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext
from sqlalchemy import Engine, select

from engine.app import App
from engine.clock import SystemClock
from engine.http.api import create_api
from engine.models import Event, Lead, ScoreEntry, Visitor, VisitorEvent
from engine.signing import lead_token
from tests.apps import ROOT, outbox_app, serving

SECRET = "snippet-secret-0123456789abcdef-0123456789"
KEY = "snippet-key-0123456789abcdef-0123456789"

pytestmark = pytest.mark.parametrize("db", ["sqlite"], indirect=True)


@dataclass
class Site:
    """A website on its own origin whose pages load the snippet from nurture."""

    server: ThreadingHTTPServer
    nurture_url: str = ""

    @property
    def origin(self) -> str:
        return f"http://localhost:{self.server.server_address[1]}"


def _site() -> Site:
    site = Site(ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler))

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            consent = ' data-consent="required"' if "consent" in self.path else ""
            page = (
                f"<!doctype html><title>Page {self.path.split('?')[0]}</title>"
                # The site's own newsletter form, posting to nurture's hosted form.
                f'<form method="post" action="{site.nurture_url}/f/newsletter">'
                '<input name="email" type="email"><input name="consent" type="checkbox">'
                '<input type="hidden" name="nurture_visitor"><button>Subscribe</button></form>'
                f'<script async src="{site.nurture_url}/t.js"{consent}></script>'
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    site.server.RequestHandlerClass = Pages
    threading.Thread(target=site.server.serve_forever, daemon=True).start()
    return site


@dataclass
class Served:
    app: App
    site: Site


@pytest.fixture
def served(db: Engine, tmp_path: Path) -> Iterator[Served]:
    """nurture on 127.0.0.1 and the site on localhost; the clock runs, as page views are dated
    by the server's clock minus their age in the browser."""
    site = _site()
    app = outbox_app(
        db,
        SystemClock(),
        tmp_path,
        ROOT / "workflows",
        NURTURE_SECRET_KEY=SECRET,
        NURTURE_SITE_ORIGINS=site.origin,
    )
    with serving(create_api(app, None, api_keys=[KEY], environ={})) as url:
        site.nurture_url = url
        yield Served(app, site)
    site.server.shutdown()


def _visit(context: BrowserContext, url: str, then: str = "nurture('flush')") -> None:
    """Open a page, wait for the snippet, run `then` and leave the page (which flushes)."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_function("window.nurture && window.nurture.loaded")
    page.evaluate(then)
    page.close(run_before_unload=True)
    assert errors == []


def _eventually(check: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the beacon never arrived"
        time.sleep(0.05)


def _rows(app: App, model: Any) -> list[Any]:
    with app.sessions() as session:
        return list(session.scalars(select(model).order_by(model.id)))


def _create_lead(app: App) -> int:
    with app.sessions.begin() as session:
        lead = Lead(
            email="jens@northwind.test",
            created_at=app.rt.clock.now(),
            updated_at=app.rt.clock.now(),
        )
        session.add(lead)
        session.flush()
        return lead.id


def test_page_views_before_and_after_identifying_join_one_lead_scored_once_in_order(
    browser: Browser, served: Served
) -> None:
    app, site = served.app, served.site
    context = browser.new_context()
    _visit(context, f"{site.origin}/pricing")
    _visit(context, f"{site.origin}/pricing?plan=team")
    _visit(context, f"{site.origin}/blog/scoring")
    _eventually(lambda: len(_rows(app, VisitorEvent)) == 3)
    (visitor,) = _rows(app, Visitor)
    cookie = {c["name"]: c["value"] for c in context.cookies(site.origin)}["nurture_vid"]
    assert visitor.id == cookie and visitor.lead_id is None
    assert _rows(app, Event) == []  # nothing is scored while the visitor is anonymous

    lead_id = _create_lead(app)
    token = lead_token(SECRET, lead_id, app.rt.clock.now())
    page = context.new_page()
    page.goto(f"{site.origin}/welcome?nurture_lead={token}&utm_source=email")
    page.wait_for_function("window.nurture && window.nurture.loaded")
    assert "nurture_lead" not in page.url and "utm_source=email" in page.url
    stamped = page.input_value("input[name=nurture_visitor]")
    page.close(run_before_unload=True)
    assert stamped == cookie
    _eventually(lambda: len(_rows(app, Event)) == 4)
    _visit(context, f"{site.origin}/pricing")
    _eventually(lambda: len(_rows(app, Event)) == 5)

    events = _rows(app, Event)
    assert {event.lead_id for event in events} == {lead_id}
    assert [event.properties["path"] for event in events] == [
        "/pricing",
        "/pricing",
        "/blog/scoring",
        "/welcome",
        "/pricing",
    ]
    assert all(event.type == "page_viewed" and event.source == "snippet" for event in events)
    assert "nurture_lead" not in events[3].properties["url"]
    assert _rows(app, VisitorEvent) == []
    assert _rows(app, Visitor)[0].lead_id == lead_id
    # The pricing rule scores once a day: three pricing views of one morning give 7 points once.
    ledger = [(e.rule, e.points) for e in _rows(app, ScoreEntry)]
    assert ledger == [("pricing_page_view", 7.0)]
    with app.sessions() as session:
        assert session.get_one(Lead, lead_id).engagement == 7.0


def test_page_views_before_and_after_a_form_fill_end_up_on_one_lead_scored_once_in_order(
    browser: Browser, served: Served
) -> None:
    app, site = served.app, served.site
    context = browser.new_context()
    _visit(context, f"{site.origin}/pricing")
    _visit(context, f"{site.origin}/blog/scoring")
    _eventually(lambda: len(_rows(app, VisitorEvent)) == 2)

    page = context.new_page()
    page.goto(f"{site.origin}/signup")
    page.wait_for_function("window.nurture && window.nurture.loaded")
    page.fill("input[name=email]", "jens@northwind.test")
    page.check("input[name=consent]")
    page.click("button")  # leaving the page sends its view; the form names the visitor
    page.wait_for_url("**/f/newsletter/thanks")
    page.close()
    _eventually(lambda: len(_rows(app, Event)) == 4)
    _visit(context, f"{site.origin}/pricing")
    _eventually(lambda: len(_rows(app, Event)) == 5)

    with app.sessions() as session:
        lead = session.scalars(select(Lead)).one()
        events = list(session.scalars(select(Event).order_by(Event.occurred_at, Event.id)))
    assert lead.email == "jens@northwind.test"
    assert {event.lead_id for event in events} == {lead.id}
    seen = [(e.type, e.properties.get("path")) for e in events]
    assert seen[:2] == [("page_viewed", "/pricing"), ("page_viewed", "/blog/scoring")]
    # The signup page's view leaves with the page as the form is sent: either may come first.
    assert sorted(seen[2:4], key=str) == [
        ("newsletter_subscribed", None),
        ("page_viewed", "/signup"),
    ]
    assert seen[4] == ("page_viewed", "/pricing")
    assert _rows(app, VisitorEvent) == []
    ledger = [e.rule for e in _rows(app, ScoreEntry) if e.rule == "pricing_page_view"]
    assert ledger == ["pricing_page_view"]  # two pricing views of one morning: scored once


@pytest.mark.parametrize(
    "signal",
    [
        "Object.defineProperty(navigator, 'doNotTrack', {get: () => '1'})",
        "Object.defineProperty(navigator, 'globalPrivacyControl', {get: () => true})",
    ],
    ids=["do-not-track", "global-privacy-control"],
)
def test_do_not_track_and_global_privacy_control_stop_collection(
    browser: Browser, served: Served, signal: str
) -> None:
    app, site = served.app, served.site
    context = browser.new_context()
    context.add_init_script(signal)
    sent: list[str] = []
    context.on("request", lambda request: sent.append(request.url))
    _visit(context, f"{site.origin}/pricing")
    _visit(context, f"{site.origin}/consent", "nurture('consent', true); nurture('flush')")
    time.sleep(1.5)  # past the snippet's batching delay
    assert not any("/t/collect" in url for url in sent)
    assert context.cookies(site.origin) == []
    assert _rows(app, Visitor) == [] and _rows(app, VisitorEvent) == []


def test_a_site_that_requires_consent_sends_nothing_until_the_visitor_gives_it(
    browser: Browser, served: Served
) -> None:
    app, site = served.app, served.site
    context = browser.new_context()
    _visit(context, f"{site.origin}/consent/pricing")
    time.sleep(1.5)
    assert _rows(app, VisitorEvent) == [] and context.cookies(site.origin) == []
    _visit(context, f"{site.origin}/consent/pricing", "nurture('consent', true)")
    _eventually(lambda: len(_rows(app, VisitorEvent)) == 1)
    assert [c["name"] for c in context.cookies(site.origin)] == ["nurture_vid"]
