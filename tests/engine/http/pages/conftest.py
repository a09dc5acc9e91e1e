"""Fixtures of the browser tests: Chromium, a small demo's database, the dashboard serving it
with a key, and a fresh tab per test (one demo and one server per test module)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from playwright.sync_api import Browser, Dialog

from engine.app import App
from engine.cli.main import main
from engine.http.api import create_api
from engine.settings import Settings
from tests.apps import serving
from tests.engine.http.pages.browser import KEY, ROOT, SECRET, Served, Tab


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
    with serving(create_api(app, None, api_keys=[KEY], environ={})) as url:
        yield Served(url, app, database)
    app.engine.dispose()


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
