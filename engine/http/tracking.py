"""The tracking snippet: `/t.js`, and `/t/collect` where it sends page views of visitors.

Decisions:
- Only the sites in NURTURE_SITE_ORIGINS may send: a request whose `Origin` is not one of
  them is refused (403) and answered without CORS headers, so browsers on other sites cannot
  read anything back either. With no origins configured the endpoint answers 404.
- The snippet sends `text/plain` JSON with `navigator.sendBeacon` (a simple request, no
  preflight); the body is checked like any other (422 naming the field).
- Browser clocks are wrong often; the snippet sends when each hit happened and when it sent
  the batch, both by the browser's clock, and the server dates each hit that long before it
  received the batch (at most a day, never in the future).
- Each client address may send QUOTA: 5 batches a second, bursts of 20 (one limiter shared
  by every API process through Redis when NURTURE_REDIS_URL is set; 429 with Retry-After).
- Hits are idempotent by the snippet's own random hit id, so a beacon sent twice counts once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from importlib.resources import files
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from engine.app import App
from engine.delivery.pacing import Pacer
from engine.funnel.leads import lead_by_id
from engine.funnel.visitors import SNIPPET, Hit, named, take
from engine.http.errors import first_error
from engine.http.public import client_address, cors, site_origin
from engine.http.routes import FollowUps
from engine.http.schemas import ErrorOut
from engine.http.throttle import Quota, limiter, throttle
from engine.models import Lead
from engine.signing import InvalidTokenError, read_lead_token

QUOTA = Quota(rate=5.0, burst=20)  # beacons per second per client address, and at once
MAX_HITS = 20  # hits per batch (the snippet sends at most this many)
MAX_AGE = timedelta(days=1)  # the oldest a hit may be dated
VISITOR = r"^[A-Za-z0-9-]{16,64}$"
HIT_ID = r"^[A-Za-z0-9-]{8,64}$"
SCRIPT = files("engine.http").joinpath("t.js").read_bytes()


class PageView(BaseModel):
    """What the snippet knows of a page: where, its title, and where the visitor came from."""

    url: str = Field(max_length=2000)
    path: str = Field(default="", max_length=2000)
    title: str = Field(default="", max_length=500)
    referrer: str = Field(default="", max_length=2000)


class View(BaseModel):
    """One page view: the snippet's random id for it and when it happened (browser ms)."""

    id: str = Field(pattern=HIT_ID)
    type: Literal["page_viewed"]
    at: int
    properties: PageView


class Beacon(BaseModel):
    """What one beacon carries: the visitor, the browser's send time, hits and a lead token."""

    visitor: str = Field(pattern=VISITOR)
    sent: int
    lead_token: str | None = Field(default=None, max_length=500)
    events: list[View] = Field(default_factory=list, max_length=MAX_HITS)


def occurred(hit: View, sent: int, received: datetime) -> datetime:
    """When a hit happened by the server's clock: its age by the browser's clock, in [0, a day]."""
    age = timedelta(milliseconds=min(max(sent - hit.at, 0), MAX_AGE // timedelta(milliseconds=1)))
    return received - age


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


_COLLECT_ERRORS: dict[int | str, dict[str, Any]] = {
    403: _error("The request's Origin is not one of NURTURE_SITE_ORIGINS"),
    404: _error("Tracking is off: NURTURE_SITE_ORIGINS names no site"),
    422: _error("The beacon is not JSON of the snippet's shape; `detail` names the field"),
    429: _error("Too many beacons from this address; Retry-After says when to send again"),
}
# The snippet sends JSON as text/plain (a simple request, no preflight); its shape is Beacon.
_COLLECT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"text/plain": {"schema": {"type": "string", "description": Beacon.__doc__}}},
    }
}


def tracking_router(
    app: App, follow: FollowUps, pacer: Pacer | None = None, quota: Quota = QUOTA
) -> APIRouter:
    """`GET /t.js` and `POST /t/collect` (no API key: origin checked, rate limited)."""
    router = APIRouter(tags=["tracking"])
    origins = frozenset(app.settings.site_origins)
    limit = pacer or limiter(app)

    @router.get("/t.js", response_class=Response)
    def script() -> Response:
        """The snippet, cached for an hour by browsers and CDNs."""
        return Response(
            SCRIPT,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    @router.post(
        "/t/collect",
        status_code=204,
        response_class=Response,
        responses=_COLLECT_ERRORS,
        openapi_extra=_COLLECT_BODY,
    )
    async def collect(request: Request) -> Response:
        """Record a beacon's page views for its visitor (on the lead once it is known)."""
        if not origins:
            raise HTTPException(404, "tracking is off: NURTURE_SITE_ORIGINS names no site")
        origin = site_origin(request, origins)
        client = client_address(request)
        body = await request.body()

        def handle() -> None:  # blocking work (Redis, row locks, the broker) off the event loop
            throttle(limit, f"collect:{client}", quota, "tracking requests")
            try:
                batch = Beacon.model_validate_json(body)
            except ValidationError as error:
                raise HTTPException(422, first_error(error.errors())) from error
            received = app.rt.clock.now()
            hits = [(hit, occurred(hit, batch.sent, received)) for hit in batch.events]
            with app.sessions.begin() as session:
                taken = take(session, app.rt, _calls(session, app, batch, hits, received))
            for each in taken:
                for outcome in each.outcomes:
                    follow.after(outcome)

        await run_in_threadpool(handle)
        return Response(status_code=204, headers=cors(origin))

    return router


def _calls(
    session: Session, app: App, batch: Beacon, hits: list[tuple[View, datetime]], now: datetime
) -> list[Hit]:
    """The beacon as visitor calls: an identify first when it carries a good lead token (one
    that is forged, expired or names an erased lead is ignored), then its page views."""
    calls: list[Hit] = []
    lead = _token_lead(session, app.settings.secret_key, batch.lead_token, now)
    if lead is not None:
        calls.append(Hit(batch.visitor, named(lead), source=SNIPPET))
    for hit, when in hits:
        properties = hit.properties.model_dump()
        event_id = f"t:{batch.visitor}:{hit.id}"
        calls.append(Hit(batch.visitor, None, hit.type, properties, when, event_id, SNIPPET))
    return calls


def _token_lead(session: Session, secret: str, token: str | None, now: datetime) -> Lead | None:
    """The lead a tracked link's token names (the survivor when it was merged since), if the
    token is good and the lead not erased."""
    if token is None:
        return None
    try:
        lead = lead_by_id(session, read_lead_token(secret, token, now))
    except InvalidTokenError:
        return None
    return lead if lead is not None and lead.erased_at is None else None
