"""The HTTP API: leads, events, sales actions, stats, health and metrics (webhooks and the
unsubscribe page are in `engine.http.webhooks`).

Every request runs its engine function in one transaction and only then enqueues the work it
made due; the database stays the source of truth, so a failed enqueue is logged and left to
the scheduler. Decisions:

- Auth: bearer API keys from `NURTURE_API_KEYS` (comma separated), compared in constant time.
  With no keys configured `create_api` raises ConfigurationError unless `allow_no_auth=True`
  (the embedded demo), so a forgotten variable never serves an open API. Weak keys (shorter
  than 32 characters, or a published placeholder) are refused; several keys let one rotate.
  `/healthz`, `/webhooks/*` (signed instead) and `/u/*` (signed tokens) need no key;
  `/metrics` does, since delivery counts are business data.
- `POST /v1/events` takes one event or `{"events": [...]}` (at most 500). The whole body is
  validated first (422 before anything is written), then each event is recorded in its own
  transaction, in order, so a big batch never holds many lead locks at once. If recording
  fails midway the events before stay recorded: send ids, and a retry counts each once.
- The OpenAPI document states what the server enforces (`engine.funnel.lead_fields`: email
  and phone patterns, time zone names, text without NUL, number bounds, a lead named by one of
  email, external_id or phone), so a body it allows is taken and one it forbids is a 422 with
  the field's path, never a 500. Email and phone also carry a format named for the library
  that checks it (`email-validator`, `phonenumbers`: a domain's labels, a country's numbering
  plan), which no pattern can state. What it cannot state: an identity that belongs to another
  lead and an occurred_at more than a day ahead of the server's clock are 409s; a path key
  that cannot name a lead is a 404 like one that names nobody.

- The dashboard (`engine.http.pages`) is served at `/` from the same app: with keys configured
  it asks for one on a login page and keeps a signed session cookie; without, it is open, and
  `nurture run` then listens on loopback only.

This module only assembles the app; the pieces are `validators` and `schemas` (what a body
may hold), `limits` (body size), `auth` (keys), `errors` (exception handlers), `routes`,
`whatif` (the plan and backtests) and `webhooks`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from fastapi import APIRouter, Depends, FastAPI

from engine.app import App
from engine.http.auth import authoriser, check_keys
from engine.http.clicks import click_router
from engine.http.errors import install_error_handlers
from engine.http.experiments import experiment_routes
from engine.http.forms import forms_router
from engine.http.limits import MAX_BODY_BYTES, BodyLimit
from engine.http.pages import mount_dashboard
from engine.http.privacy import privacy_routes
from engine.http.routes import (
    FollowUps,
    Workers,
    broker_probe,
    event_routes,
    health_route,
    lead_routes,
    merge_routes,
    report_routes,
)
from engine.http.schemas import error_responses
from engine.http.segment import segment_router
from engine.http.tracking import tracking_router
from engine.http.webhooks import unsubscribe_router, webhook_router
from engine.http.whatif import list_sequences, whatif_routes
from engine.read.metrics import Metrics
from engine.safety import api_keys_from


def create_api(
    app: App,
    tasks: Workers | None = None,
    *,
    api_keys: Sequence[str] | None = None,
    allow_no_auth: bool = False,
    allow_unsigned_webhooks: bool = False,
    max_body_bytes: int = MAX_BODY_BYTES,
    environ: Mapping[str, str] | None = None,
) -> FastAPI:
    """The FastAPI application over one App; `tasks` (when given) receives follow-up work.

    `environ` (default os.environ) supplies NURTURE_API_KEYS when `api_keys` is None, and the
    webhook secrets SENDGRID_WEBHOOK_PUBLIC_KEY and TWILIO_AUTH_TOKEN.
    """
    env = os.environ if environ is None else environ
    keys = list(api_keys) if api_keys is not None else api_keys_from(env)
    check_keys(keys, allow_no_auth)
    probe = broker_probe(app, tasks)
    metrics = Metrics(app.sessions, app.rt.clock, probe)
    follow = FollowUps(tasks, metrics)

    api = FastAPI(
        title="nurture", version="0.1.0", summary="Lead scoring, nurture sequences, SQL handoff."
    )
    api.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    install_error_handlers(api)
    router = APIRouter(
        dependencies=[Depends(authoriser(keys))] if keys else [],
        responses=error_responses(401) if keys else {},
    )
    lead_routes(router, app, follow)
    merge_routes(router, app, follow)
    event_routes(router, app, follow)
    report_routes(router, app, metrics)
    whatif_routes(router, app, tasks)
    experiment_routes(router, app)
    privacy_routes(router, app)
    list_sequences(api, app)
    health_route(api, app, probe)
    api.include_router(router)
    api.include_router(
        webhook_router(
            app,
            follow.after,
            metrics,
            sendgrid_key=env.get("SENDGRID_WEBHOOK_PUBLIC_KEY") or None,
            twilio_token=env.get("TWILIO_AUTH_TOKEN") or None,
            allow_unsigned=allow_unsigned_webhooks,
        )
    )
    api.include_router(unsubscribe_router(app, follow.after))
    api.include_router(segment_router(app, follow, env))
    api.include_router(click_router(app, follow.after))
    api.include_router(tracking_router(app, follow))
    api.include_router(forms_router(app, follow, tasks))
    mount_dashboard(api, app, follow.after, keys)
    return api
