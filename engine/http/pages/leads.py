"""Lead pages: search, one lead's attributes, score, decision trace and the sales actions."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from engine.errors import InvalidLeadError, NurtureError
from engine.funnel.leads import lead_by_id
from engine.funnel.service import Outcome, recycle_lead, win_lead
from engine.http.pages.site import LAST_PAGE, PAGE_SIZE, Site
from engine.models import Lead, Stage
from engine.read.timeline import score_series, timeline
from engine.read.views import MAX_ID, find_by_key, lead_detail
from engine.workflow.spec import Condition

_SCORE_AT_LEAST = re.compile(r"\bscore\s*>=\s*(\d+(?:\.\d+)?)")


def lead_routes(router: APIRouter, site: Site) -> None:
    """GET /leads (search), GET /leads/{id}, POST /leads/{id}/recycle and /won."""

    @router.get("/leads", include_in_schema=False)
    def search_page(request: Request, q: str = "", stage: str = "", page: int = 1) -> Response:
        visit = site.visit(request)
        page = min(max(page, 1), LAST_PAGE)
        chosen = Stage(stage) if stage in Stage.__members__.values() else None
        with site.app.sessions() as session:
            exact = _exact(session, q)
            if exact is not None:
                return RedirectResponse(f"/leads/{exact}", 303)
            rows, more = _search(session, q, chosen, page)
        return site.page(
            request,
            visit,
            "leads.html",
            q=q,
            stage=chosen.value if chosen else "",
            stages=list(Stage),
            leads=rows,
            page=page,
            more=more,
        )

    @router.get("/leads/{lead_id}", include_in_schema=False)
    def lead_page(request: Request, lead_id: int) -> Response:
        visit = site.visit(request)
        with site.app.sessions() as session:
            lead = _lead(session, lead_id)
            if lead.id != lead_id:  # merged into another since: its page is the survivor's
                return RedirectResponse(f"/leads/{lead.id}", 303)
            detail = lead_detail(session, lead)
            trace = [entry.as_dict() for entry in reversed(timeline(session, lead.id))]
            scoring = site.app.rt.workflows.scoring
            series = score_series(session, lead.id, [rule.id for rule in scoring.fit])
        chart = {
            "labels": [at.strftime("%Y-%m-%d %H:%M") for at, *_ in series],
            "series": [
                {"label": "score", "data": [total for _, total, _, _ in series]},
                {"label": "fit", "data": [fit for _, _, fit, _ in series]},
                {"label": "engagement", "data": [eng for _, _, _, eng in series]},
            ],
            "lines": _lines({"MQL": scoring.mql, "SQL": scoring.sql}),
        }
        return site.page(
            request, visit, "lead.html", detail=detail, trace=trace, chart=chart, message=""
        )

    @router.post("/leads/{lead_id}/recycle", include_in_schema=False)
    async def recycle(request: Request, lead_id: int) -> Response:
        _, form = await site.posted(request)
        reason = form.get("reason", "").strip() or "recycled from the dashboard"
        return _act(site, lead_id, lambda s, id_: recycle_lead(s, site.app.rt, id_, reason))

    @router.post("/leads/{lead_id}/won", include_in_schema=False)
    async def won(request: Request, lead_id: int) -> Response:
        await site.posted(request)
        return _act(site, lead_id, lambda s, id_: win_lead(s, site.app.rt, id_, "won by sales"))


def _act(site: Site, lead_id: int, action: Callable[[Session, int], Outcome]) -> Response:
    """Run a sales action on the lead (the survivor of a merged one's id) in one transaction,
    hand on its follow-up work, back to the lead."""
    with site.app.sessions.begin() as session:
        acted_on = _lead(session, lead_id).id
        try:
            outcome = action(session, acted_on)
        except InvalidLeadError as error:
            raise HTTPException(409, str(error)) from error
    site.after(outcome)
    return RedirectResponse(f"/leads/{acted_on}", 303)


def _lead(session: Session, lead_id: int) -> Lead:
    """The lead with this id, or the survivor of a lead merged since (a page or link from
    before the merge); 404 when there is none, also for an id no key can hold."""
    lead = lead_by_id(session, lead_id) if 0 < lead_id <= MAX_ID else None
    if lead is None:
        raise HTTPException(404, f"no lead with id {lead_id}")
    return lead


def _exact(session: Session, q: str) -> int | None:
    """The id of the one lead `q` names exactly (id, email, phone, external id), if any."""
    if not q.strip():
        return None
    try:
        return find_by_key(session, q).id
    except NurtureError:
        return None


def _search(session: Session, q: str, stage: Stage | None, page: int) -> tuple[list[Lead], bool]:
    """Leads at `stage` whose email, name or company holds `q`, newest first, a page at a time."""
    query = select(Lead).order_by(Lead.id.desc())
    if stage is not None:
        query = query.where(Lead.stage == stage)
    if q.strip():
        like = f"%{q.strip().lower()}%"
        query = query.where(
            or_(
                Lead.email_key.like(like),
                func.lower(Lead.first_name + " " + Lead.last_name).like(like),
                func.lower(Lead.company).like(like),
            )
        )
    rows = list(session.scalars(query.offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE + 1)))
    return rows[:PAGE_SIZE], len(rows) > PAGE_SIZE


def _lines(conditions: dict[str, Condition]) -> list[dict[str, Any]]:
    """Threshold lines for the score chart, where a condition is a plain `score >= N`."""
    lines = []
    for label, condition in conditions.items():
        match = _SCORE_AT_LEAST.search(condition.text)
        if match:
            lines.append({"label": f"{label} ({condition.text})", "value": float(match.group(1))})
    return lines
