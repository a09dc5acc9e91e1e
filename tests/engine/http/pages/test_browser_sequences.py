"""The sequence pages in a real headless Chromium (Debian's package) against the demo's data:
from a step's count to the leads behind it, and on to one of them.

Playwright drives the browser installed on the machine; nothing is downloaded. Screenshots go
to `$NURTURE_TEST_OUTPUT/screenshots` (default `test-output/screenshots`).
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

from engine.app import App
from engine.cli.main import main
from engine.http.api import create_api
from engine.models import Delivery
from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[4]
KEY = "browser-key-0123456789abcdef-0123456789"
SECRET = "browser-secret-0123456789abcdef-0123456789"
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


def test_a_steps_deferred_count_lists_its_leads_and_each_lead_shows_that_send_and_why(
    tab: Tab, served: Served
) -> None:
    page = tab.page
    _sign_in(page, served)
    page.click("nav >> text=Sequences")
    page.click("#sequences >> text=lead-nurture")
    deferred = page.locator('a[data-count="deferred"][data-step="awareness/email:welcome"]')
    shown = int(str(deferred.locator(".figure").text_content()).replace(",", ""))
    assert shown > 0, "the demo's welcome emails wait for the send window"
    _shot(page, "sequence")
    deferred.click()
    page.wait_for_selector("#sequence-leads")
    first = page.locator("#sequence-leads tbody tr").first
    delivery_id = str(first.get_attribute("data-delivery"))
    with served.app.sessions() as s:
        delivery = s.get(Delivery, delivery_id)
        assert delivery is not None and delivery.detail is not None
        assert (delivery.sequence, delivery.milestone, delivery.step) == (
            "lead-nurture",
            "awareness",
            "email:welcome",
        )
    first.locator("a").first.click()
    page.wait_for_selector("#trace")
    assert page.url.endswith(f"/leads/{delivery.lead_id}")
    reason = page.locator(f'#trace tr[data-delivery="{delivery_id}"] td.reason').text_content()
    assert delivery.detail in str(reason)
    assert tab.errors == [] and tab.dialogs == []
