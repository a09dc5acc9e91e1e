"""Answers conditions' questions about a lead from the database, never from user code."""

from __future__ import annotations

from copy import copy
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from engine.clock import as_utc
from engine.funnel.memo import memo_of
from engine.models import Event, Lead

_LATEST = (
    select(Event.type, func.max(Event.occurred_at))
    .where(Event.lead_id == bindparam("lead"), Event.occurred_at <= bindparam("now"))
    .group_by(Event.type)
)


class LeadFacts:
    """Facts about one lead at `now`; event tests without a window look back to `since`.

    The latest time of each event type is read once, on the first event test, so a pass over
    several conditions and enrolments costs one query, not one per test.
    """

    def __init__(
        self, session: Session, lead: Lead, now: datetime, since: datetime | None = None
    ) -> None:
        self._session = session
        self._lead = lead
        self._now = now
        self._since = since
        self._latest: dict[str, datetime] | None = None
        self.score = lead.score
        self.fit = lead.fit
        self.engagement = lead.engagement
        self.stage = lead.stage

    def since(self, start: datetime | None) -> LeadFacts:
        """The same facts with another context start, sharing what was already read."""
        view = copy(self)
        view._since = start
        return view

    def rescored(self, fit: float, engagement: float) -> LeadFacts:
        """The same facts at another score: what the thresholds would say after a rescore."""
        view = copy(self)
        view.fit, view.engagement, view.score = fit, engagement, fit + engagement
        return view

    def attribute(self, name: str) -> Any:
        """A lead field or custom field; None when absent."""
        return self._lead.attribute(name)

    def has_event(self, types: tuple[str, ...], within: timedelta | None) -> bool:
        """True when one of `types` happened within the window (else since the context start)."""
        start = self._now - within if within is not None else self._since
        latest = self._latest_by_type()
        return any(
            (moment := latest.get(kind)) is not None and (start is None or moment >= start)
            for kind in types
        )

    def _latest_by_type(self) -> dict[str, datetime]:
        if self._latest is None:
            memo = memo_of(self._session)
            remembered = memo.latest_of(self._lead.id) if memo is not None else None
            if remembered is not None:
                self._latest = remembered
            else:
                rows = self._session.execute(_LATEST, {"lead": self._lead.id, "now": self._now})
                self._latest = {kind: as_utc(moment) for kind, moment in rows}
        return self._latest
