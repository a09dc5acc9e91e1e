"""The dashboard in a real headless Chromium (Debian's package) against the demo's data.

Playwright drives the browser installed on the machine; nothing is downloaded. Screenshots of
each page go to `$NURTURE_TEST_OUTPUT/screenshots` (default `test-output/screenshots`).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner
from playwright.sync_api import Browser, Dialog, Page, sync_playwright
from sqlalchemy import select

from engine.app import App
from engine.cli.main import main
from engine.funnel.service import upsert_lead
from engine.http.api import create_api
from engine.models import Delivery, Lead, Stage
from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[4]
KEY = "browser-key-0123456789abcdef-0123456789"
SECRET = "browser-secret-0123456789abcdef-0123456789"
HOSTILE = "<script>alert(1)</script>"
OUTPUT = Path(os.environ.get("NURTURE_TEST_OUTPUT", ROOT / "test-output")) / "screenshots"


@dataclass(frozen=True)
class Served:
    """A dashboard on the demo's database, and the app behind it."""

    url: str
    app: App
    database: str


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium: skipped without it, failed without it under CI=true."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (apt-get install -y chromium chromium-driver)")
        pytest.skip("chromium is not installed")
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small run of `nurture demo`: its database is what the dashboard shows."""
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(
        main,
        [
            "--workflows",
            str(ROOT / "workflows"),
            "--templates",
            str(ROOT / "templates"),
            "demo",
            "--leads",
            "150",
            "--days",
            "30",
            "--out",
            str(out),
            "--json",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "nurture.db" in json.loads(result.stdout)["dashboard"]["command"]
    return out / "nurture.db"


@pytest.fixture(scope="module")
def served(demo: Path) -> Iterator[Served]:
    """`create_api` with a key over the demo's database, served by uvicorn on a free port."""
    database = f"sqlite:///{demo}"
    settings = Settings.from_env(
        {
            "NURTURE_DATABASE_URL": database,
            "NURTURE_WORKFLOWS": str(ROOT / "workflows"),
            "NURTURE_TEMPLATES": str(ROOT / "templates"),
            "NURTURE_SECRET_KEY": SECRET,
            "NURTURE_OUTBOX_DIR": str(demo.parent / "outbox"),
        }
    )
    app = App.create(settings, environ={})
    api = create_api(app, None, api_keys=[KEY], environ={})
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the dashboard did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield Served(f"http://127.0.0.1:{port}", app, database)
    server.should_exit = True
    thread.join(10)
    app.engine.dispose()


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@dataclass
class Tab:
    """A page in a fresh browser context (no cookies), with the dialogs and script errors it saw."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def tab(browser: Browser, served: Served) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = Tab(context.new_page())

    def dismiss(dialog: Dialog) -> None:
        tab.dialogs.append(dialog.message)
        dialog.dismiss()

    tab.page.on("dialog", dismiss)
    tab.page.on("pageerror", lambda error: tab.errors.append(str(error)))
    yield tab
    context.close()


def _sign_in(page: Page, served: Served) -> None:
    page.goto(served.url + "/")
    assert "/login" in page.url
    page.fill("input[name=key]", KEY)
    page.click("button[type=submit]")
    page.wait_for_url(served.url + "/")


def _shot(page: Page, name: str) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"{name}.png"), full_page=True)


def test_the_overview_shows_the_stage_counts_that_stats_gives(tab: Tab, served: Served) -> None:
    page = tab.page
    result = CliRunner().invoke(
        main,
        [
            "--database-url",
            served.database,
            "--workflows",
            str(ROOT / "workflows"),
            "--templates",
            str(ROOT / "templates"),
            "stats",
            "--json",
        ],
        catch_exceptions=False,
    )
    stages = json.loads(result.stdout)["stages"]
    _sign_in(page, served)
    for stage in ("subscriber", "lead", "mql", "sql", "mql_ever", "sql_ever"):
        shown = page.text_content(f'[data-stage="{stage}"] .figure')
        assert int(str(shown).replace(",", "")) == stages[stage], stage
    page.wait_for_selector('canvas#per-day[data-drawn="true"]')
    assert tab.errors == []
    _shot(page, "overview")


def test_a_lead_found_by_search_shows_its_deferred_send_with_the_reason(
    tab: Tab, served: Served
) -> None:
    page = tab.page
    with served.app.sessions() as s:
        email, detail = s.execute(
            select(Lead.email, Delivery.detail)
            .join(Lead, Lead.id == Delivery.lead_id)
            .where(Delivery.detail.like("deferred to %"))
            .order_by(Delivery.id)
            .limit(1)
        ).one()
    _sign_in(page, served)
    page.fill("header input[name=q]", str(email))
    page.press("header input[name=q]", "Enter")
    page.wait_for_selector("#trace")
    reasons = page.locator("#trace td.reason").all_text_contents()
    assert any(str(detail) in reason for reason in reasons), reasons
    page.wait_for_selector('canvas#score[data-drawn="true"]')
    _shot(page, "lead")


def test_login_is_required_and_a_forged_cookie_is_refused(tab: Tab, served: Served) -> None:
    page = tab.page
    page.goto(served.url + "/handoffs")
    assert "/login" in page.url
    _shot(page, "login")
    page.context.add_cookies(
        [{"name": "nurture_session", "value": "eyJrIjoiYWJjIn0.aaaaaa.forged", "url": served.url}]
    )
    page.goto(served.url + "/handoffs")
    assert "/login" in page.url
    page.fill("input[name=key]", KEY)
    page.click("button[type=submit]")
    page.wait_for_selector("#handoffs")
    assert page.url.endswith("/handoffs")
    _shot(page, "handoffs")


def test_a_lead_named_with_a_script_shows_it_as_text(tab: Tab, served: Served) -> None:
    page = tab.page
    with served.app.sessions.begin() as s:
        outcome = upsert_lead(s, served.app.rt, {"email": "hostile@x.test", "first_name": HOSTILE})
        lead_id = outcome.lead_id
    _sign_in(page, served)
    page.goto(f"{served.url}/leads/{lead_id}")
    assert page.text_content("#lead-name") == HOSTILE
    page.goto(f"{served.url}/leads?q=x.test")
    assert tab.dialogs == []


def test_recycle_from_the_lead_page_changes_the_stage(tab: Tab, served: Served) -> None:
    page = tab.page
    with served.app.sessions() as s:
        lead_id = s.scalars(
            select(Lead.id).where(Lead.stage == Stage.SQL).order_by(Lead.id).limit(1)
        ).one()
    _sign_in(page, served)
    page.goto(f"{served.url}/leads/{lead_id}")
    page.fill("input[name=reason]", "budget next quarter")
    page.click("#recycle")
    page.wait_for_selector("#lead-stage:has-text('recycled')")
    with served.app.sessions() as s:
        assert s.get(Lead, lead_id).stage == Stage.RECYCLED  # type: ignore[union-attr]
