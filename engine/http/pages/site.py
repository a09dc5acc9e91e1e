"""What every dashboard page shares: the app, the access rules, the follow-up hand-off."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse

from engine.app import App
from engine.funnel.service import Outcome
from engine.http.pages.access import Access, Visit
from engine.http.pages.templating import page

PAGE_SIZE = 50
LAST_PAGE = 100_000  # further pages hold nothing anyone reads; their offset would overflow


@dataclass(frozen=True)
class Site:
    """One dashboard over one App: who may look, and where committed work is handed on."""

    app: App
    access: Access
    after: Callable[[Outcome], None]

    def visit(self, request: Request) -> Visit:
        """The visitor's session; a redirect to the login page when one is needed."""
        visit = self.access.visit(request)
        if not visit.signed_in:
            target = quote(str(request.url.path) + _query(request), safe="/?=&")
            raise HTTPException(303, "sign in first", headers={"Location": f"/login?next={target}"})
        return visit

    async def posted(self, request: Request) -> tuple[Visit, dict[str, str]]:
        """A signed-in visitor's form, after its CSRF token checked out."""
        visit = self.visit(request)
        return visit, await self.form(request, visit)

    async def form(self, request: Request, visit: Visit) -> dict[str, str]:
        """The posted form of this visit (signed in or not); 403 unless it carries its token."""
        form = {key: str(value) for key, value in (await request.form()).items()}
        self.access.check_csrf(visit, form.get("csrf"))
        return form

    def page(
        self, request: Request, visit: Visit, name: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        """A rendered page for this visit."""
        return page(request, self.access, visit, name, context, status)


def _query(request: Request) -> str:
    return f"?{request.url.query}" if request.url.query else ""
