"""`GET /c/{token}`: a tracked email link, recorded as the lead's click and redirected.

No API key: the token is signed by us (`engine.delivery.links`). Decisions:
- A token that does not verify (forged, truncated, or with another URL put in) is a 404 with
  no Location and no link: the redirect can only ever go where an email of ours pointed.
- The redirect (302, never cached) goes to exactly the signed URL; a URL on one of
  NURTURE_SITE_ORIGINS also carries the lead's signed token for the tracking snippet.
- The click is recorded (`record_click`: once per link of a delivery) and committed before the
  follow-up work is handed on, so a failed enqueue loses nothing. When the delivery or its lead
  is gone or erased, or the database fails, the person still gets where the link pointed, and
  nothing is recorded (and no lead token appended).
- HEAD (link checkers, scanners, previews) redirects and records nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from engine.app import App
from engine.delivery.links import read_click, record_click, with_lead_token
from engine.funnel.service import Outcome
from engine.signing import InvalidTokenError, lead_token

log = logging.getLogger(__name__)

_NO_STORE = {"Cache-Control": "no-store"}
_RESPONSES: dict[int | str, dict[str, object]] = {
    302: {"description": "To the link's original URL (the lead's token added for the website)"},
    404: {"content": {"text/plain": {}}, "description": "The token is not one we signed"},
}


def click_router(app: App, after: Callable[[Outcome], None]) -> APIRouter:
    """The redirect behind every tracked link; `after` hands on the work a click made due."""
    router = APIRouter(prefix="/c", tags=["clicks"])
    settings = app.settings

    @router.get("/{token}", response_class=Response, status_code=302, responses=_RESPONSES)
    @router.head("/{token}", response_class=Response, status_code=302, responses=_RESPONSES)
    def follow(token: str, request: Request) -> Response:
        """Record the click on the lead of the email the link was in, then go where it points."""
        try:
            click = read_click(settings.secret_key, token)
        except InvalidTokenError:
            return PlainTextResponse("This link is not valid.", 404, headers=_NO_STORE)
        location = click.url
        if request.method == "GET":
            try:
                with app.sessions.begin() as session:
                    outcome = record_click(session, app.rt, click)
            except SQLAlchemyError as error:
                log.error("click on delivery %s not recorded: %s", click.delivery_id, error)
                outcome = None
            if outcome is not None:
                after(outcome)
                token = lead_token(settings.secret_key, outcome.lead_id, app.rt.clock.now())
                location = with_lead_token(location, settings.site_origins, token)
        # As signed: the rewrite signs the URL a browser requests, in ASCII, ready for a header.
        return Response(status_code=302, headers={"Location": location, **_NO_STORE})

    return router
