"""Fault injection for event processing: the journey raises after it ran, as a workflow edit
that it cannot handle would, so everything scored before it must be undone."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from engine.funnel import service
from engine.models import Enrolment, Lead
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Fired

MESSAGE = "milestone 'awareness' is not in sequence 'drip'"


class JourneyFault:
    """Breaks `service._react` for every lead, or only the emails given, while `on` is true."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *emails: str) -> None:
        self.on = True
        self.emails = set(emails)
        self.calls = 0  # journeys that raised
        real = service._react

        def react(
            session: Session, rt: Runtime, lead: Lead, fired: tuple[Fired, ...]
        ) -> list[Enrolment]:
            running = real(session, rt, lead, fired)
            if self.on and (not self.emails or lead.email in self.emails):
                self.calls += 1
                raise RuntimeError(MESSAGE)
            return running

        monkeypatch.setattr(service, "_react", react)
