"""An App for tests: the test database, a workflows folder, the shipped templates, the outbox."""

from __future__ import annotations

from pathlib import Path

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
