"""The snippet's collect endpoint on SQLite and PostgreSQL: only the configured sites, bodies
checked with field paths, a per-address rate limit, beacons counted once, hits dated by the
server's clock, and lead tokens that identify only when good."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.pacing import LocalPacer
from engine.http.api import create_api
from engine.http.routes import FollowUps
from engine.http.throttle import Quota
from engine.http.tracking import tracking_router
from engine.models import Event, Lead, Visitor, VisitorEvent
from engine.read.metrics import Metrics
from engine.signing import lead_token
from tests.apps import ROOT, outbox_app

SECRET = "tracking-secret-0123456789abcdef-0123456789"
SITE = "https://www.acme.test"
VISITOR = "3f0c6a53-1b9e-4f7e-9a55-7d2f0c1e9b21"


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    return outbox_app(
        db,
        clock,
        tmp_path,
        ROOT / "workflows",
        NURTURE_SECRET_KEY=SECRET,
        NURTURE_SITE_ORIGINS=f"{SITE},http://localhost:3000",
    )


@pytest.fixture
def client(nurture: App) -> TestClient:
    return TestClient(create_api(nurture, None, api_keys=["k" * 40], environ={}))


def _beacon(*paths: str, sent: int = 1_000_000, **extra: Any) -> dict[str, Any]:
    hits = [
        {
            "id": f"hit-{path.strip('/') or 'home'}-{index}",
            "type": "page_viewed",
            "at": sent - 1000 * (len(paths) - index),
            "properties": {"url": f"{SITE}{path}", "path": path, "title": path, "referrer": ""},
        }
        for index, path in enumerate(paths)
    ]
    return {"visitor": VISITOR, "sent": sent, "events": hits} | extra


def _collect(client: TestClient, body: Any, origin: str = SITE) -> Any:
    content = body if isinstance(body, str) else json.dumps(body)
    headers = {"Origin": origin, "Content-Type": "text/plain;charset=UTF-8"}
    return client.post("/t/collect", content=content, headers=headers)


def _all(app: App, model: Any) -> list[Any]:
    with app.sessions() as session:
        return list(session.scalars(select(model).order_by(model.id)))


def _lead(app: App, email: str = "ana@northwind.test", **columns: Any) -> int:
    now = app.rt.clock.now()
    with app.sessions.begin() as session:
        lead = Lead(email=email, created_at=now, updated_at=now, **columns)
        session.add(lead)
        session.flush()
        return lead.id


def test_the_snippet_is_served_as_cacheable_javascript(client: TestClient) -> None:
    response = client.get("/t.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "max-age=3600" in response.headers["cache-control"]
    assert "sendBeacon" in response.text and "globalPrivacyControl" in response.text


def test_a_beacon_from_a_configured_site_is_kept_for_its_anonymous_visitor(
    client: TestClient, nurture: App, clock: FrozenClock
) -> None:
    response = _collect(client, _beacon("/", "/pricing"))
    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] == SITE
    kept = _all(nurture, VisitorEvent)
    assert [(e.visitor_id, e.type, e.properties["path"]) for e in kept] == [
        (VISITOR, "page_viewed", "/"),
        (VISITOR, "page_viewed", "/pricing"),
    ]
    # Dated by the server's clock, as old as the browser says (2 s and 1 s before sending).
    assert [e.occurred_at for e in kept] == [
        clock.now() - timedelta(seconds=2),
        clock.now() - timedelta(seconds=1),
    ]
    assert _all(nurture, Event) == []


def test_a_beacon_sent_twice_counts_once(client: TestClient, nurture: App) -> None:
    for _ in range(2):
        assert _collect(client, _beacon("/pricing")).status_code == 204
    assert len(_all(nurture, VisitorEvent)) == 1


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.test",
        "",
        "null",
        "https://www.acme.test.evil.test",
        "https://www.acme.test:8443",
        "http://www.acme.test",
    ],
)
def test_other_origins_are_refused_without_cors_headers(
    client: TestClient, nurture: App, origin: str
) -> None:
    response = _collect(client, _beacon("/pricing"), origin=origin)
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers
    assert _all(nurture, VisitorEvent) == []


def test_a_site_configured_with_its_default_port_may_send_from_the_origin_browsers_send(
    db: Engine, clock: FrozenClock, tmp_path: Path
) -> None:
    app = outbox_app(
        db,
        clock,
        tmp_path,
        ROOT / "workflows",
        NURTURE_SECRET_KEY=SECRET,
        NURTURE_SITE_ORIGINS=f"{SITE}:443",
    )
    client = TestClient(create_api(app, None, api_keys=["k" * 40], environ={}))

    response = _collect(client, _beacon("/pricing"))

    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] == SITE
    assert len(_all(app, VisitorEvent)) == 1


def test_without_configured_sites_tracking_is_off(
    db: Engine, clock: FrozenClock, tmp_path: Path
) -> None:
    app = outbox_app(db, clock, tmp_path, ROOT / "workflows", NURTURE_SECRET_KEY=SECRET)
    client = TestClient(create_api(app, None, api_keys=["k" * 40], environ={}))
    assert _collect(client, _beacon("/pricing")).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("not json", "body: "),
        (_beacon("/") | {"visitor": "short"}, "visitor: "),
        (
            _beacon("/") | {"events": [{"id": "hit-000001", "type": "bought", "at": 1}]},
            "events[0].type: ",
        ),
        (_beacon(*[f"/{n}" for n in range(21)]), "events: "),
    ],
    ids=["not-json", "bad-visitor", "unknown-type", "too-many-hits"],
)
def test_a_bad_body_is_a_422_naming_the_field(
    client: TestClient, nurture: App, body: Any, field: str
) -> None:
    response = _collect(client, body)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(field)
    assert _all(nurture, VisitorEvent) == []


def test_an_address_sending_too_fast_gets_429_with_retry_after(nurture: App) -> None:
    follow = FollowUps(None, Metrics(nurture.sessions, nurture.rt.clock, None))
    api = FastAPI()
    # Four beacons at once, then one every 100 s: however slow the machine, the fifth is refused.
    quota = Quota(rate=0.01, burst=3)
    api.include_router(tracking_router(nurture, follow, LocalPacer(), quota))
    client = TestClient(api)
    answers = [
        _collect(client, _beacon("/", sent=n) | {"visitor": str(uuid.uuid4())}).status_code
        for n in range(4)
    ]
    assert answers == [204] * 4
    refused = _collect(client, _beacon("/"))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 90
    assert len(_all(nurture, VisitorEvent)) == 4


def test_a_lead_token_from_a_tracked_link_identifies_the_visitor_and_stitches_its_past(
    client: TestClient, nurture: App, clock: FrozenClock
) -> None:
    assert _collect(client, _beacon("/", "/pricing")).status_code == 204
    lead_id = _lead(nurture)
    token = lead_token(SECRET, lead_id, clock.now())
    beacon = _beacon("/welcome", sent=2_000_000) | {"lead_token": token}
    assert _collect(client, beacon).status_code == 204
    events = _all(nurture, Event)
    assert [(e.lead_id, e.properties["path"]) for e in events] == [
        (lead_id, "/"),
        (lead_id, "/pricing"),
        (lead_id, "/welcome"),
    ]
    assert _all(nurture, VisitorEvent) == []
    (visitor,) = _all(nurture, Visitor)
    assert visitor.lead_id == lead_id
    # Later page views of the visitor go straight to the lead.
    assert _collect(client, _beacon("/docs", sent=3_000_000)).status_code == 204
    assert [e.lead_id for e in _all(nurture, Event)] == [lead_id] * 4


@pytest.mark.parametrize("problem", ["forged", "expired", "erased"])
def test_a_bad_lead_token_is_ignored_and_the_views_stay_anonymous(
    client: TestClient, nurture: App, clock: FrozenClock, problem: str
) -> None:
    lead_id = _lead(nurture, erased_at=clock.now() if problem == "erased" else None)
    issued = clock.now() - (timedelta(days=8) if problem == "expired" else timedelta(0))
    token = lead_token("another-secret" if problem == "forged" else SECRET, lead_id, issued)
    assert _collect(client, _beacon("/pricing") | {"lead_token": token}).status_code == 204
    assert _all(nurture, Event) == []
    assert len(_all(nurture, VisitorEvent)) == 1
    assert _all(nurture, Visitor)[0].lead_id is None
