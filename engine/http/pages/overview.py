"""The overview page: stages, MQLs and SQLs per day, handoffs, sends, events, provider errors."""

from __future__ import annotations

from datetime import date, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.http.pages.site import Site
from engine.models import Event
from engine.read.overview import Period, overview


def overview_routes(router: APIRouter, site: Site) -> None:
    """GET / with an optional date range (?start=YYYY-MM-DD&end=YYYY-MM-DD)."""

    @router.get("/", include_in_schema=False)
    def overview_page(request: Request, start: str = "", end: str = "") -> Response:
        visit = site.visit(request)
        now = site.app.rt.clock.now()
        with site.app.sessions() as session:
            last_day = _last_active_day(session, now)
            try:
                period, problem = Period.parse(start, end, last_day), ""
            except ValueError as error:
                period, problem = Period.parse(None, None, last_day), str(error)
            # "the last 7 days" of handoffs end where the period does, so a past range shows its own
            figures = overview(session, period, min(now, period.bounds()[1]))
        chart = {
            "labels": [day["day"] for day in figures["per_day"]],
            "series": [
                {"label": "MQLs", "data": [day["mql"] for day in figures["per_day"]]},
                {"label": "SQLs", "data": [day["sql"] for day in figures["per_day"]]},
            ],
        }
        status = 400 if problem else 200
        return site.page(
            request, visit, "overview.html", status, figures=figures, chart=chart, problem=problem
        )


def _last_active_day(session: Session, now: datetime) -> date:
    """Today, or the day of the latest event when none came since: an imported or demo base
    opens on its own last month, not on an empty one."""
    latest = session.scalar(select(Event.occurred_at).order_by(Event.id.desc()).limit(1))
    return min(now, latest).date() if latest is not None else now.date()
