"""An App for tests: the test database, a workflows folder, the shipped templates, the outbox;
and an API served on a free port of this machine, for browsers and other processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine

from channels.base import EMAIL, SMS
from channels.outbox import OutboxChannel
from engine.app import App
from engine.clock import Clock
from engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "engine" / "fixtures" / "workflows"


def outbox_app(
    db: Engine,
    clock: Clock,
    tmp_path: Path,
    workflows: Path = FIXTURES,
    **environ: str,
) -> App:
    """An App on `db` whose email and SMS go to `tmp_path/outbox`; `environ` adds NURTURE_*
    settings (a secret, a public URL) to the workflows and templates."""
    settings = Settings.from_env(
        {
            "NURTURE_WORKFLOWS": str(workflows),
            "NURTURE_TEMPLATES": str(ROOT / "templates"),
            **environ,
        }
    )
    outbox = tmp_path / "outbox"
    channels = {EMAIL: OutboxChannel(outbox, EMAIL, clock), SMS: OutboxChannel(outbox, SMS, clock)}
    return App.create(settings, clock=clock, environ={}, channels=channels, engine=db, paced=False)


@contextmanager
def serving(api: FastAPI) -> Iterator[str]:
    """Serve `api` with uvicorn on a free port of 127.0.0.1 in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
