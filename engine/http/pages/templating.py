"""Rendering dashboard pages: one autoescaping Jinja2 environment, filters, security headers.

Everything a page shows goes through autoescaping, and chart data through `tojson` into a
`<script type="application/json">` block that no browser runs; the Content-Security-Policy
allows scripts and styles from this server only, so a lead named `<script>` stays text.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from engine.http.pages.access import Access, Visit

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
        "object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _when(value: datetime | str | None) -> str:
    """A timestamp as people read it, in UTC to the minute; '' for none."""
    if value is None or value == "":
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _number(value: float | int | None) -> str:
    """A count or score with thousands separators and no needless decimals."""
    if value is None:
        return ""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


ENVIRONMENT = Environment(
    loader=PackageLoader("engine.http.pages", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENVIRONMENT.filters["when"] = _when
ENVIRONMENT.filters["number"] = _number


def page(
    request: Request,
    access: Access,
    visit: Visit,
    name: str,
    context: dict[str, Any],
    status: int = 200,
) -> HTMLResponse:
    """The rendered page `name` with the visit's CSRF token, the nav and the security headers."""
    html = ENVIRONMENT.get_template(name).render(
        csrf=visit.csrf,
        signed_in=visit.signed_in,
        login_required=access.required,
        path=request.url.path,
        **context,
    )
    response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
    if visit.fresh:
        access.set_cookie(response, request, access.anonymous(visit))
    return response
