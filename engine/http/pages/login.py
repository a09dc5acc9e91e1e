"""Signing in to the dashboard with an API key, and signing out."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from engine.http.pages.access import COOKIE, safe_next
from engine.http.pages.site import Site


def login_routes(router: APIRouter, site: Site) -> None:
    """GET and POST /login, POST /logout."""

    @router.get("/login", include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> Response:
        visit = site.access.visit(request)
        if visit.signed_in:
            return RedirectResponse(safe_next(next), 303)
        return site.page(request, visit, "login.html", target=safe_next(next), problem="")

    @router.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        visit = site.access.visit(request)
        form = await site.form(request, visit)
        target = safe_next(form.get("next"))
        cookie = site.access.sign_in(form.get("key", ""))
        if cookie is None:
            problem = "That key is not one of NURTURE_API_KEYS."
            return site.page(request, visit, "login.html", 401, target=target, problem=problem)
        response = RedirectResponse(target, 303)
        site.access.set_cookie(response, request, cookie)
        return response

    @router.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        await site.posted(request)
        response = RedirectResponse("/login" if site.access.required else "/", 303)
        response.delete_cookie(COOKIE, path="/")
        return response
