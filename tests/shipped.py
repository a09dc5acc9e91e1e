"""The shipped templates by name, read from templates/ as the engine reads them, for the tests
that load workflows naming them: one list, which a new template joins by being added."""

from __future__ import annotations

from pathlib import Path

from engine.delivery.rendering import Renderer

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
EMAIL_TEMPLATES = Renderer(TEMPLATES).email_templates()
SMS_TEMPLATES = Renderer(TEMPLATES).sms_templates()
