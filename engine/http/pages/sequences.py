"""Sequence pages: every sequence, one drawn from its YAML with its figures and experiments, and
the leads behind each figure."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from engine.http.pages.access import Visit
from engine.http.pages.recent import Recent
from engine.http.pages.site import LAST_PAGE, Site
from engine.read.experiments import sequence_experiments
from engine.read.journeys import STEP_FIGURES, sequence_leads, sequence_list, sequence_view

FIGURE_NAMES = {"now_in": "now in", "mql": "reached MQL", "sql": "reached SQL"}
REFRESH_SECONDS = 60  # a sequence's figures are at most this old


def sequence_routes(router: APIRouter, site: Site) -> None:
    """GET /sequences, GET /sequences/{name} and GET /sequences/{name}/leads."""
    views: Recent[dict[str, Any]] = Recent(REFRESH_SECONDS, site.app.rt.clock.now)

    def counted(name: str) -> dict[str, Any]:
        rt = site.app.rt
        with site.app.sessions() as session:
            view = sequence_view(session, rt, name)
            found = sequence_experiments(session, rt, name, rt.clock.now())
            view["experiments"] = found if found.experiments or found.holdout else None
            return view

    @router.get("/sequences", include_in_schema=False)
    def sequences_page(request: Request) -> Response:
        visit = site.visit(request)
        with site.app.sessions() as session:
            listed = sequence_list(session, site.app.rt)
        return site.page(request, visit, "sequences.html", sequences=listed, problem="")

    @router.get("/sequences/{name}", include_in_schema=False)
    def sequence_page(request: Request, name: str) -> Response:
        visit = site.visit(request)
        if name not in site.app.rt.workflows.sequences:
            return _unknown(site, request, visit, name)
        sequence = site.app.rt.workflows.sequences[name]
        view, counted_at = views.get((name, sequence.version), lambda: counted(name))
        return site.page(
            request,
            visit,
            "sequence.html",
            sequence=view,
            step_figures=STEP_FIGURES,
            counted_at=counted_at,
            refresh_seconds=REFRESH_SECONDS,
        )

    @router.get("/sequences/{name}/leads", include_in_schema=False)
    def sequence_leads_page(
        request: Request,
        name: str,
        milestone: str = "",
        step: str = "",
        what: str = "",
        page: int = 1,
    ) -> Response:
        visit = site.visit(request)
        if name not in site.app.rt.workflows.sequences:
            return _unknown(site, request, visit, name)
        page = min(max(page, 1), LAST_PAGE)
        try:
            with site.app.sessions() as session:
                rows, more = sequence_leads(session, name, milestone, step, what, page)
            problem, status = "", 200
        except ValueError as error:
            rows, more, problem, status = [], False, str(error), 400
        return site.page(
            request,
            visit,
            "sequence_leads.html",
            status,
            sequence=name,
            milestone=milestone,
            step=step,
            what=what,
            figure=FIGURE_NAMES.get(what, what),
            rows=rows,
            page=page,
            more=more,
            problem=problem,
        )


def _unknown(site: Site, request: Request, visit: Visit, name: str) -> Response:
    """The list of sequences, saying that `name` is none of them: a 404 that helps."""
    with site.app.sessions() as session:
        listed = sequence_list(session, site.app.rt)
    problem = f"There is no sequence named “{name}”. These are the sequences loaded:"
    return site.page(request, visit, "sequences.html", 404, sequences=listed, problem=problem)
