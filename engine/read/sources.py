"""Where leads come from, as figures: the website's page views and the visitors behind them,
how many a form or a tracked link identified, and how much anonymous history joined a lead."""

from __future__ import annotations

from sqlalchemy import Select, exists, func, select
from sqlalchemy.orm import Session

from engine.funnel.visitors import SNIPPET
from engine.models import Event, Visitor, VisitorEvent

PAGE_VIEWED = "page_viewed"


def website_figures(session: Session) -> dict[str, int]:
    """The snippet's page views (on leads and still anonymous), the visitors seen, those
    identified and those not, and the page views made before their visitor was identified
    that now count on its lead (stitched); JSON-ready."""
    on_leads = select(func.count()).where(Event.source == SNIPPET, Event.type == PAGE_VIEWED)
    earlier = exists().where(
        Visitor.lead_id == Event.lead_id,
        Visitor.identified_at.is_not(None),
        Event.occurred_at < Visitor.identified_at,
    )
    waiting = select(func.count()).where(
        VisitorEvent.source == SNIPPET, VisitorEvent.type == PAGE_VIEWED
    )
    visitors = session.execute(
        select(func.count(), func.count(Visitor.lead_id)).select_from(Visitor)
    ).one()
    anonymous = _count(session, waiting)
    return {
        "page_views": _count(session, on_leads) + anonymous,
        "visitors": int(visitors[0]),
        "identified": int(visitors[1]),
        "anonymous": int(visitors[0]) - int(visitors[1]),
        "joined": _count(session, on_leads.where(earlier)),
        "anonymous_page_views": anonymous,
    }


def _count(session: Session, query: Select[int]) -> int:
    """A count query's answer, 0 for none."""
    return int(session.scalar(query) or 0)
