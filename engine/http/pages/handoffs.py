"""The handoffs list for sales: filter by owner, status and date; export what is shown as CSV."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from engine.http.pages.site import LAST_PAGE, PAGE_SIZE, Site
from engine.models import Handoff, HandoffStatus, Lead

CSV_COLUMNS = (
    "handoff_id",
    "created_at",
    "status",
    "delivered_at",
    "owner",
    "lead_id",
    "email",
    "phone",
    "name",
    "company",
    "score",
    "fit",
    "engagement",
)


@dataclass(frozen=True)
class Filters:
    """What the list shows: one owner, one status, a range of days; problems found in them."""

    owner: str = ""
    status: str = ""
    since: date | None = None
    until: date | None = None
    problem: str = ""

    @classmethod
    def parse(cls, owner: str, status: str, since: str, until: str) -> Filters:
        """The filters from the query string; a bad one is dropped and named in `problem`."""
        problems = []
        if status and status not in HandoffStatus.__members__.values():
            problems.append(f"status: one of {', '.join(HandoffStatus)}")
            status = ""
        days: list[date | None] = []
        for name, text in (("since", since), ("until", until)):
            try:
                days.append(date.fromisoformat(text) if text else None)
            except ValueError:
                problems.append(f"{name}: not a date (YYYY-MM-DD)")
                days.append(None)
        return cls(owner.strip(), status, days[0], days[1], "; ".join(problems))

    def apply(self, query: Select[Handoff, Lead]) -> Select[Handoff, Lead]:
        """The query narrowed to these filters."""
        if self.owner:
            query = query.where(Handoff.owner == self.owner)
        if self.status:
            query = query.where(Handoff.status == HandoffStatus(self.status))
        if self.since is not None:
            query = query.where(Handoff.created_at >= datetime.combine(self.since, time(), UTC))
        if self.until is not None:
            end = datetime.combine(self.until + timedelta(days=1), time(), UTC)
            query = query.where(Handoff.created_at < end)
        return query


def handoff_routes(router: APIRouter, site: Site) -> None:
    """GET /handoffs and GET /handoffs.csv, with the same filters."""

    @router.get("/handoffs", include_in_schema=False)
    def handoffs_page(
        request: Request,
        owner: str = "",
        status: str = "",
        since: str = "",
        until: str = "",
        page: int = 1,
    ) -> Response:
        visit = site.visit(request)
        filters = Filters.parse(owner, status, since, until)
        page = min(max(page, 1), LAST_PAGE)
        with site.app.sessions() as session:
            rows = _rows(session, filters, (page - 1) * PAGE_SIZE, PAGE_SIZE + 1)
            owners = _owners(session)
        return site.page(
            request,
            visit,
            "handoffs.html",
            400 if filters.problem else 200,
            rows=rows[:PAGE_SIZE],
            more=len(rows) > PAGE_SIZE,
            page=page,
            filters=filters,
            owners=owners,
            statuses=list(HandoffStatus),
            query=request.url.query,
        )

    @router.get("/handoffs.csv", include_in_schema=False)
    def handoffs_csv(
        request: Request, owner: str = "", status: str = "", since: str = "", until: str = ""
    ) -> Response:
        site.visit(request)
        filters = Filters.parse(owner, status, since, until)
        with site.app.sessions() as session:
            rows = _rows(session, filters, 0, None)
        out = io.StringIO()
        writer = csv.DictWriter(out, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(_neutralised(row) for row in rows)
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="handoffs.csv"'},
        )


def _rows(
    session: Session, filters: Filters, offset: int, limit: int | None
) -> list[dict[str, Any]]:
    """Handoffs newest first with their lead, as flat rows for the table and the CSV."""
    query = filters.apply(
        select(Handoff, Lead).join(Lead, Lead.id == Handoff.lead_id).order_by(Handoff.id.desc())
    )
    query = query.offset(offset).limit(limit) if limit is not None else query
    rows = []
    for handoff, lead in session.execute(query):
        score = handoff.score if isinstance(handoff.score, dict) else {}
        rows.append(
            {
                "handoff_id": handoff.id,
                "created_at": handoff.created_at.isoformat(),
                "status": handoff.status.value,
                "delivered_at": handoff.delivered_at.isoformat() if handoff.delivered_at else "",
                "owner": handoff.owner or "",
                "lead_id": lead.id,
                "email": lead.email or "",
                "phone": lead.phone or "",
                "name": lead.full_name,
                "company": lead.company or "",
                "score": score.get("total", ""),
                "fit": score.get("fit", ""),
                "engagement": score.get("engagement", ""),
            }
        )
    return rows


def _owners(session: Session) -> list[str]:
    """Every owner a handoff went to, for the filter's choices."""
    found = session.scalars(select(Handoff.owner).where(Handoff.owner.is_not(None)).distinct())
    return sorted(owner for owner in found if owner)


FREE_TEXT = ("owner", "email", "name", "company")  # the rest are ids, times and numbers


def _neutralised(row: dict[str, Any]) -> dict[str, Any]:
    """Free text that a spreadsheet would run as a formula (=, +, -, @) starts with a quote."""
    return row | {
        key: f"'{row[key]}" for key in FREE_TEXT if str(row[key])[:1] in ("=", "+", "-", "@")
    }
