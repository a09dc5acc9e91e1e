"""Answers conditions' questions about a lead from the database, never from user code."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from engine.leads import attribute
from engine.models import Event, Lead


class LeadFacts:
    """Facts about one lead at `now`; event tests without a window look back to `since`."""

    def __init__(
        self, session: Session, lead: Lead, now: datetime, since: datetime | None = None
    ) -> None:
        self._session = session
        self._lead = lead
        self._now = now
        self._since = since
        self.score = lead.score
        self.fit = lead.fit
        self.engagement = lead.engagement
        self.stage = lead.stage

    def attribute(self, name: str) -> Any:
        """A lead field or custom field; None when absent."""
        return attribute(self._lead, name)

    def has_event(self, types: tuple[str, ...], within: timedelta | None) -> bool:
        """True when one of `types` happened within the window (else since the context start)."""
        start = self._now - within if within is not None else self._since
        query = select(Event.id).where(Event.lead_id == self._lead.id, Event.type.in_(types))
        if start is not None:
            query = query.where(Event.occurred_at >= start)
        query = query.where(Event.occurred_at <= self._now)
        return bool(self._session.scalar(select(exists(query))))
