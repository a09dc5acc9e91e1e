"""The dashboard: server-rendered pages for marketers and sales over the same App as the API.

May import: read, funnel, app and the low floors; imported by `engine.http.api` only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from engine.app import App
from engine.funnel.service import Outcome
from engine.http.pages.access import Access
from engine.http.pages.handoffs import handoff_routes
from engine.http.pages.leads import lead_routes
from engine.http.pages.login import login_routes
from engine.http.pages.overview import overview_routes
from engine.http.pages.previews import preview_routes
from engine.http.pages.sequences import sequence_routes
from engine.http.pages.site import Site


def mount_dashboard(
    api: FastAPI, app: App, after: Callable[[Outcome], None], keys: Sequence[str]
) -> None:
    """Serve the pages at / and their assets at /static, behind the keys when there are any."""
    site = Site(app, Access(keys, app.settings.secret_key), after)
    router = APIRouter()
    login_routes(router, site)
    overview_routes(router, site)
    sequence_routes(router, site)
    lead_routes(router, site)
    handoff_routes(router, site)
    preview_routes(router, site)
    api.include_router(router)
    api.mount("/static", StaticFiles(packages=[("engine.http.pages", "static")]), name="static")


__all__ = ["mount_dashboard"]
