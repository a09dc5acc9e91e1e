"""Fixtures of the browser tests: Chromium, a small demo's database, the dashboard serving it
with a key, and a fresh tab per test (one demo and one server per test module)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner
from playwright.sync_api import Browser, Dialog, sync_playwright

from engine.app import App
from engine.cli.main import main
from engine.http.api import create_api
from engine.settings import Settings
from tests.engine.http.pages.browser import KEY, ROOT, SECRET, Served, Tab


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
