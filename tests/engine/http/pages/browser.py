"""What the browser tests share: the demo's dashboard they drive, a tab that records dialogs
and script errors, signing in and screenshots.

Playwright drives Debian's Chromium installed on the machine; nothing is downloaded.
Screenshots go to `$NURTURE_TEST_OUTPUT/screenshots` (default `test-output/screenshots`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Page

from engine.app import App

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


@dataclass
class Tab:
    """A page in a fresh browser context (no cookies), with the dialogs and script errors it saw."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def sign_in(page: Page, served: Served) -> None:
    """Sign in through the login page the first visit lands on."""
    page.goto(served.url + "/")
    assert "/login" in page.url
    page.fill("input[name=key]", KEY)
    page.click("button[type=submit]")
    page.wait_for_url(served.url + "/")


def shot(page: Page, name: str) -> None:
    """Save a full-page screenshot under the test run's output folder."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"{name}.png"), full_page=True)
