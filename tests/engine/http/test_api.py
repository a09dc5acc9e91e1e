"""The HTTP API on SQLite and PostgreSQL: keys, validation with field paths, idempotent events,
lead views, sales actions, signed provider webhooks, one-click unsubscribe, health and metrics."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy import event as sa_event
from sqlalchemy.exc import OperationalError
from twilio.request_validator import RequestValidator

from engine.app import App
from engine.clock import FrozenClock
from engine.delivery import feedback
from engine.delivery.sending import send_delivery
from engine.delivery.unsubscribe import make_token
from engine.errors import ConfigurationError
from engine.http.api import create_api
from engine.models import Delivery, Enrolment, Event, Lead, LeadConflict, Suppression, TopicOptOut
from engine.runner.actors import Tasks
from engine.runner.inline import run_due
from engine.settings import Settings
from tests.apps import outbox_app
from tests.channels.servers import SendGridSigner
from tests.conftest import START
from tests.engine.faults import MESSAGE, JourneyFault

KEY = "test-key-0123456789abcdef-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
PUBLIC_URL = "https://nurture.acme.test"
SECRET = "unsubscribe-secret"
TWILIO_TOKEN = "test-auth-token"
ANA_EMAIL, ANA_PHONE = "ana@northwind.test", "+15005550001"
ANA: dict[str, Any] = {"email": ANA_EMAIL, "phone": ANA_PHONE, "sms_consent": True}


@pytest.fixture(scope="module")
def signer() -> SendGridSigner:
    return SendGridSigner()


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    """An App on the test database, with the test workflows and the outbox for both channels."""
    return outbox_app(db, clock, tmp_path, NURTURE_PUBLIC_URL=PUBLIC_URL, NURTURE_SECRET_KEY=SECRET)


def _client(
    app: App, signer: SendGridSigner, tasks: Tasks | None = None, **options: Any
) -> TestClient:
    environ = {"SENDGRID_WEBHOOK_PUBLIC_KEY": signer.public_key, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN}
    options.setdefault("api_keys", [KEY])
    return TestClient(create_api(app, tasks, environ=environ, **options), headers=AUTH)


@pytest.fixture
def client(nurture: App, signer: SendGridSigner) -> TestClient:
    return _client(nurture, signer)


def _event(type_: str, lead: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"lead": lead or ANA, "type": type_, **extra}


def _post(client: TestClient, type_: str, **extra: Any) -> dict[str, Any]:
    response = client.post("/v1/events", json=_event(type_, **extra))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _count(app: App, model: type[Any]) -> int:
    with app.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _lead(app: App) -> Lead:
    with app.sessions() as s:
        return s.scalars(select(Lead).where(Lead.email == ANA_EMAIL)).one()


def _enrol_and_send(client: TestClient, app: App) -> Delivery:
    """Ana fills in the form; the drip plans the welcome email and the outbox sends it."""
    _post(client, "form_submitted")
    run_due(app.sessions, app.rt)
    with app.sessions() as s:
        delivery = s.scalars(select(Delivery).where(Delivery.template == "welcome")).one()
    assert send_delivery(app, delivery.id) == "sent"
    with app.sessions() as s:
        return s.get_one(Delivery, delivery.id)


def _loc(response: httpx.Response) -> list[list[Any]]:
    assert response.status_code == 422, response.text
    return [item["loc"] for item in response.json()["detail"]]


# --- Keys ------------------------------------------------------------------------------------


def test_requests_without_a_key_or_with_a_wrong_key_are_refused(client: TestClient) -> None:
    lead = {"email": "dana@initech.test"}
    missing = client.post("/v1/leads", json=lead, headers={"Authorization": ""})
    wrong = client.post(
        "/v1/leads", json=lead, headers={"Authorization": "Bearer wrong-key-0123456789"}
    )
    basic = client.post("/v1/leads", json=lead, headers={"Authorization": f"Basic {KEY}"})

    assert missing.status_code == wrong.status_code == basic.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.post("/v1/leads", json=lead).status_code == 200
    assert client.get("/metrics", headers={"Authorization": ""}).status_code == 401


def test_any_of_several_configured_keys_is_accepted(nurture: App) -> None:
    keys = "first-key-0123456789-0123456789-01, second-key-0123456789-0123456789-0"
    api = create_api(nurture, environ={"NURTURE_API_KEYS": keys})
    with TestClient(api) as client:
        for key in ("first-key-0123456789-0123456789-01", "second-key-0123456789-0123456789-0"):
            response = client.get("/v1/leads/1", headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 404  # past the key check: there is no lead 1


def test_the_api_refuses_to_start_without_keys_unless_told_it_is_a_local_demo(
    nurture: App,
) -> None:
    with pytest.raises(ConfigurationError, match="NURTURE_API_KEYS"):
        create_api(nurture, environ={})
    with pytest.raises(ConfigurationError, match="at least 32"):
        create_api(nurture, api_keys=["short"], environ={})
    with pytest.raises(ConfigurationError, match="placeholder"):
        create_api(nurture, api_keys=["change-me-to-a-long-random-key"], environ={})

    open_api = TestClient(create_api(nurture, allow_no_auth=True, environ={}))
    assert open_api.post("/v1/leads", json={"email": "dana@initech.test"}).status_code == 200


# --- Leads -----------------------------------------------------------------------------------


def test_upserting_a_lead_returns_it_with_identity_stage_and_score(client: TestClient) -> None:
    response = client.post(
        "/v1/leads",
        json={
            "email": " Dana@Initech.TEST ",
            "first_name": "Dana",
            "title": "Director of IT",
            "timezone": "America/Chicago",
            "fields": {"company_size": 250, "industry": "saas"},
        },
    )

    assert response.status_code == 200, response.text
    lead = response.json()
    assert lead["email"] == "Dana@initech.test"  # the mailbox as written, the domain lower-cased
    assert lead["stage"] == "lead"
    assert lead["score"] == {"total": 10.0, "fit": 10.0, "engagement": 0.0}
    assert lead["fields"] == {"company_size": 250, "industry": "saas"}

    again = client.post("/v1/leads", json={"email": "dana@initech.test", "title": "Analyst"})
    assert again.json()["id"] == lead["id"]
    assert again.json()["score"]["fit"] == 0.0
    assert again.json()["first_name"] == "Dana"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"email": "not-an-address"}, ["body", "email"]),
        ({"email": "dana@initech.test", "phone": "555-CALL-NOW"}, ["body", "phone"]),
        ({"email": "dana@initech.test", "timezone": "Mars/Olympus"}, ["body", "timezone"]),
        (
            {"email": "dana@initech.test", "fields": {"stage": "sql"}},
            ["body", "fields", "stage", "[key]"],
        ),
        ({"email": "dana@initech.test", "sms_consent": "yes"}, ["body", "sms_consent"]),
        ({"email": "dana@initech.test", "title": "VP\x00"}, ["body", "title"]),
        ({"email": "dana@initech.test", "nickname": "D"}, ["body", "nickname"]),
        ({"first_name": "Dana"}, ["body"]),
    ],
)
def test_invalid_lead_data_is_a_422_naming_the_field(
    client: TestClient, nurture: App, body: dict[str, Any], loc: list[Any]
) -> None:
    assert loc in _loc(client.post("/v1/leads", json=body))
    assert _count(nurture, Lead) == 0


def test_a_phone_number_written_the_national_way_is_read_in_the_leads_country(
    client: TestClient,
) -> None:
    polish = {"email": "zofia@wojcik.test", "phone": "512 345 678", "fields": {"country": "PL"}}
    danish = {"email": "soren@baekgaard.test", "phone": "20 12 34 56", "fields": {"country": "pl"}}

    read = client.post("/v1/leads", json=polish)
    refused = client.post("/v1/leads", json=danish)  # no Polish number: the plan says why
    unread = client.post("/v1/leads", json={**polish, "fields": {}})  # no region to read it in

    assert read.status_code == 200, read.text
    assert read.json()["phone"] == "+48512345678"
    assert ["body", "phone"] in _loc(refused) and ["body", "phone"] in _loc(unread)


def test_an_empty_email_phone_external_id_or_time_zone_is_taken_as_not_given(
    client: TestClient,
) -> None:
    body = {"email": "dana@initech.test", "phone": "", "external_id": "", "timezone": ""}

    created = client.post("/v1/leads", json=body)
    kept = client.post(
        "/v1/leads", json={**body, "email": "", "external_id": "crm-1", "timezone": "Asia/Tokyo"}
    )
    again = client.post("/v1/leads", json={"external_id": "crm-1", "timezone": ""})

    assert created.status_code == 200, created.text
    lead = created.json()
    assert (lead["phone"], lead["external_id"], lead["timezone"]) == (None, None, None)
    assert kept.json()["id"] == again.json()["id"] != lead["id"]
    assert again.json()["timezone"] == "Asia/Tokyo"
    assert _loc(client.post("/v1/leads", json={"email": "", "phone": ""})) == [["body"]]


def test_a_lead_is_shown_by_email_phone_or_id_with_ledger_enrolments_and_deliveries(
    client: TestClient, nurture: App
) -> None:
    delivery = _enrol_and_send(client, nurture)
    lead_id = _lead(nurture).id

    for key in (ANA_EMAIL, ANA_PHONE, str(lead_id)):
        response = client.get(f"/v1/leads/{key}")
        assert response.status_code == 200, response.text
        detail = response.json()
        assert detail["lead"]["id"] == lead_id
    assert detail["score"] == {"total": 10.0, "fit": 0.0, "engagement": 10.0}
    assert [(e["rule"], e["points"]) for e in detail["ledger"]] == [("form", 10.0)]
    assert [(e["sequence"], e["milestone"], e["status"]) for e in detail["enrolments"]] == [
        ("drip", "awareness", "active")
    ]
    assert detail["deliveries"][0]["id"] == delivery.id
    assert detail["deliveries"][0]["status"] == "sent"
    assert detail["handoffs"] == []


def test_a_key_that_names_nobody_or_cannot_name_anyone_is_a_404(client: TestClient) -> None:
    for key in ("nobody@initech.test", "+15005550999", "42", "99999999999999", "crm-7"):
        assert client.get(f"/v1/leads/{key}").status_code == 404, key
    for key in ("+12", "nurture@localhost", "x" * 300, "%00"):  # the document allows each
        response = client.get(f"/v1/leads/{key}")
        assert response.status_code == 404, (key, response.text)
        assert response.json()["detail"].startswith("no lead with key")


def test_recycling_a_lead_that_is_not_qualified_is_a_409_with_the_engine_message(
    client: TestClient,
) -> None:
    _post(client, "newsletter_subscribed")

    response = client.post(f"/v1/leads/{ANA_EMAIL}/recycle", json={"reason": "not now"})

    assert response.status_code == 409
    assert "only an mql, sql or customer can be recycled" in response.json()["detail"]
    assert client.post("/v1/leads/nobody@x.test/recycle", json={"reason": "x"}).status_code == 404


def test_sales_recycles_an_mql_and_wins_a_lead(client: TestClient, nurture: App) -> None:
    _post(client, "form_submitted")
    assert _post(client, "demo_requested")["stage"] == "mql"

    recycled = client.post(f"/v1/leads/{ANA_EMAIL}/recycle", json={"reason": "no budget"})
    assert recycled.status_code == 200, recycled.text
    assert recycled.json()["stage"] == "recycled"
    assert recycled.json()["score"]["engagement"] == 0.0

    won = client.post(f"/v1/leads/{ANA_EMAIL}/won", json={"reason": "signed"})
    assert won.status_code == 200
    assert won.json()["stage"] == "customer"
    with nurture.sessions() as s:
        assert {e.status for e in s.scalars(select(Enrolment))} == {"exited"}
    assert client.post(f"/v1/leads/{ANA_EMAIL}/won").json()["stage"] == "customer"


# --- Events ----------------------------------------------------------------------------------


def test_an_event_is_recorded_scored_and_answered_with_the_lead_stage(client: TestClient) -> None:
    result = _post(client, "form_submitted", id="evt-1", properties={"form": "demo"})

    assert result["id"] == "evt-1"
    assert result["duplicate"] is False
    assert result["points"] == 10.0
    assert result["stage"] == "lead"
    assert result["handoff_id"] is None


def test_the_same_event_id_twice_is_recorded_once(client: TestClient, nurture: App) -> None:
    first = _post(client, "form_submitted", id="evt-1")
    second = _post(client, "form_submitted", id="evt-1")

    assert second["duplicate"] is True
    assert second["event_id"] == first["event_id"]
    assert second["points"] == 0
    assert _count(nurture, Event) == 1
    assert _lead(nurture).engagement == 10.0


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"lead": ANA}, ["body", "type"]),
        (_event("form_submitted", occurred_at="2026-03-02T09:00:00"), ["body", "occurred_at"]),
        (_event("form_submitted", occurred_at="1969-12-31T23:59:59Z"), ["body", "occurred_at"]),
        (_event("form submitted"), ["body", "type"]),
        (_event("form_submitted", lead={"email": "ana@"}), ["body", "lead", "email"]),
        (_event("page_viewed", properties={"url": float("nan")}), ["body", "properties"]),
        ({"events": []}, ["body", "events"]),
    ],
)
def test_an_invalid_event_is_a_422_naming_the_field(
    client: TestClient, nurture: App, body: dict[str, Any], loc: list[Any]
) -> None:
    content = json.dumps(body)  # NaN goes over the wire as the JSON extension Python reads
    headers = {"Content-Type": "application/json"}
    response = client.post("/v1/events", content=content, headers=headers)

    assert loc in _loc(response)
    assert _count(nurture, Event) == 0


def test_an_event_dated_more_than_a_day_ahead_of_the_servers_clock_is_a_409_and_not_stored(
    client: TestClient, nurture: App
) -> None:
    ahead = _event("form_submitted", occurred_at="2026-03-09T09:00:00Z")
    far = _event("form_submitted", occurred_at="9999-12-31T23:00:00-05:00")  # beyond year 9999 UTC

    refused = client.post("/v1/events", json=ahead)
    batch = client.post("/v1/events", json={"events": [_event("page_viewed"), far]})

    assert (refused.status_code, batch.status_code) == (409, 409), (refused.text, batch.text)
    assert refused.json()["detail"].startswith("occurred_at: more than a day ahead")
    assert batch.json()["detail"].startswith("events[1].occurred_at: more than a day ahead")
    assert _count(nurture, Event) == 0


def test_a_batch_is_validated_as_a_whole_before_any_event_is_recorded(
    client: TestClient, nurture: App
) -> None:
    batch = {"events": [_event("form_submitted"), {"lead": ANA}, _event("x", {"phone": "1"})]}

    locs = _loc(client.post("/v1/events", json=batch))

    assert ["body", "events", 1, "type"] in locs
    assert ["body", "events", 2, "lead", "phone"] in locs
    assert _count(nurture, Event) == 0 and _count(nurture, Lead) == 0


def test_a_batch_records_every_event_in_order_and_reports_each(
    client: TestClient, nurture: App
) -> None:
    batch = {
        "events": [
            _event("form_submitted", id="a", occurred_at="2026-03-01T10:00:00+01:00"),
            _event("demo_requested", id="b"),
            _event("form_submitted", id="a"),
        ]
    }

    response = client.post("/v1/events", json=batch)

    assert response.status_code == 200, response.text
    results = response.json()["events"]
    assert [(r["id"], r["duplicate"], r["stage"]) for r in results] == [
        ("a", False, "lead"),
        ("b", False, "mql"),
        ("a", True, "mql"),
    ]
    assert _count(nurture, Event) == 2
    metrics = client.get("/metrics").text
    assert "nurture_events_ingested_total 2.0" in metrics


def test_an_event_whose_processing_fails_is_stored_answered_200_and_counted_once_on_retry(
    client: TestClient, nurture: App, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = JourneyFault(monkeypatch)

    failed = _post(client, "form_submitted", id="evt-1")
    again = _post(client, "form_submitted", id="evt-1")

    assert (failed["processing"], failed["error"]) == ("failed", f"RuntimeError: {MESSAGE}")
    assert (failed["duplicate"], failed["points"], failed["stage"]) == (False, 0, "lead")
    assert (again["duplicate"], again["event_id"]) == (True, failed["event_id"])
    assert again["processing"] == "failed"  # still awaiting its retry
    with nurture.sessions() as s:
        (event,) = s.scalars(select(Event))
    assert (event.id, event.status, event.attempts) == (failed["event_id"], "failed", 1)

    fault.on = False
    clock.advance(timedelta(minutes=1))
    run_due(nurture.sessions, nurture.rt)
    third = _post(client, "form_submitted", id="evt-1")

    assert (third["duplicate"], third["processing"], third["error"]) == (True, "processed", None)
    assert _count(nurture, Event) == 1
    assert _lead(nurture).engagement == 10.0
    assert "nurture_events_ingested_total 1.0" in client.get("/metrics").text


def test_a_batch_says_for_each_event_whether_its_processing_failed(
    client: TestClient, nurture: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    JourneyFault(monkeypatch, "bo@initech.test")
    batch = {
        "events": [
            _event("form_submitted", id="a"),
            _event("form_submitted", {"email": "bo@initech.test"}, id="b"),
            _event("email_clicked", id="c"),
        ]
    }

    response = client.post("/v1/events", json=batch)

    assert response.status_code == 200, response.text
    results = response.json()["events"]
    assert [(r["id"], r["processing"], r["error"], r["points"]) for r in results] == [
        ("a", "processed", None, 10.0),
        ("b", "failed", f"RuntimeError: {MESSAGE}", 0.0),
        ("c", "processed", None, 6.0),
    ]
    assert all(r["event_id"] is not None for r in results)
    assert _count(nurture, Event) == 3


def test_an_event_giving_another_leads_phone_is_kept_and_malformed_lead_data_stores_nothing(
    client: TestClient, nurture: App
) -> None:
    _post(client, "page_viewed", lead={"email": "bo@initech.test", "phone": ANA_PHONE})
    taken_phone = _event("form_submitted", {"email": ANA_EMAIL, "phone": ANA_PHONE}, id="e1")
    malformed = _event("form_submitted", {"email": "ana@"}, id="e2")

    kept = client.post("/v1/events", json=taken_phone)

    assert kept.status_code == 200, kept.text
    assert ["body", "lead", "email"] in _loc(client.post("/v1/events", json=malformed))
    assert _count(nurture, Event) == 2 and _count(nurture, Lead) == 2
    with nurture.sessions() as s:  # the number stays with bo; the conflict is listed
        (conflict,) = s.scalars(select(LeadConflict)).all()
        assert (conflict.other_id, conflict.field, conflict.value) == (1, "phone", ANA_PHONE)


def test_the_lead_view_lists_unprocessed_events_with_error_attempts_and_next_retry(
    client: TestClient, nurture: App, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = JourneyFault(monkeypatch)
    posted = _post(client, "form_submitted", id="evt-1")
    clock.advance(timedelta(minutes=1))
    run_due(nurture.sessions, nurture.rt)  # fails again: the next try in two minutes

    (shown,) = client.get(f"/v1/leads/{ANA_EMAIL}").json()["unprocessed_events"]

    assert {k: shown[k] for k in ("id", "idempotency_key", "type", "status", "attempts")} == {
        "id": posted["event_id"],
        "idempotency_key": "evt-1",
        "type": "form_submitted",
        "status": "failed",
        "attempts": 2,
    }
    assert shown["error"] == f"RuntimeError: {MESSAGE}"
    assert datetime.fromisoformat(shown["retry_at"]) == START + timedelta(minutes=3)
    assert datetime.fromisoformat(shown["received_at"]) == START

    fault.on = False
    clock.advance(timedelta(minutes=2))
    run_due(nurture.sessions, nurture.rt)
    detail = client.get(f"/v1/leads/{ANA_EMAIL}").json()
    assert detail["unprocessed_events"] == []
    assert [e["rule"] for e in detail["ledger"]] == ["form"]


def test_a_batch_of_more_than_500_events_is_refused(client: TestClient) -> None:
    batch = {"events": [_event("page_viewed")] * 501}

    assert ["body", "events"] in _loc(client.post("/v1/events", json=batch))


def test_a_body_over_the_limit_is_refused_with_413_by_length_or_as_it_streams(
    nurture: App, signer: SendGridSigner
) -> None:
    client = _client(nurture, signer, max_body_bytes=1000)
    big = json.dumps(_event("page_viewed", properties={"x": "y" * 2000})).encode()

    declared = client.post("/v1/events", content=big, headers={"Content-Type": "application/json"})
    streamed = client.post(
        "/v1/events",
        content=iter([big[:600], big[600:]]),
        headers={"Content-Type": "application/json"},
    )

    assert declared.status_code == streamed.status_code == 413
    assert "Content-Length" not in streamed.request.headers
    assert _count(nurture, Event) == 0
    assert client.post("/v1/events", json=_event("page_viewed")).status_code == 200


def test_due_work_is_enqueued_after_commit_and_the_worker_sends_it(
    nurture: App, signer: SendGridSigner, tmp_path: Path
) -> None:
    broker = StubBroker()
    tasks = Tasks(broker, nurture)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        client = _client(nurture, signer, tasks)
        _post(client, "form_submitted")
        for queue in ("journeys", "sends"):
            broker.join(queue, timeout=10_000)
        worker.join()
    finally:
        worker.stop()

    with nurture.sessions() as s:
        (delivery,) = s.scalars(select(Delivery))
    assert (delivery.template, delivery.status) == ("welcome", "sent")
    assert (tmp_path / "outbox" / "email" / f"{delivery.id}.eml").exists()


# --- Stats, health, metrics ------------------------------------------------------------------


def test_stats_show_stage_counts_and_the_funnel_of_each_sequence(
    client: TestClient, nurture: App
) -> None:
    _enrol_and_send(client, nurture)

    stats = client.get("/v1/stats").json()

    assert stats["stages"]["lead"] == 1
    drip = stats["sequences"]["drip"]
    assert (drip["enrolled"], drip["active"]) == (1, 1)
    assert drip["steps"][0]["template"] == "welcome"
    assert drip["steps"][0]["sent"] == 1
    assert stats["median_days_to_sql"] is None


def test_health_reports_the_database_and_the_broker(client: TestClient) -> None:
    response = client.get("/healthz", headers={"Authorization": ""})

    assert response.status_code == 200
    assert response.json() == {"database": "ok", "broker": "ok"}


def test_health_is_503_naming_an_unreachable_broker(nurture: App, signer: SendGridSigner) -> None:
    broker = RedisBroker(url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        client = _client(nurture, signer, Tasks(broker, nurture))
        response = client.get("/healthz")
    finally:
        broker.close()

    assert response.status_code == 503
    assert response.json()["database"] == "ok"
    assert response.json()["broker"].startswith("failed: ConnectionError")


def test_metrics_count_deliveries_by_status_and_the_scheduler_lag(
    client: TestClient, nurture: App, clock: FrozenClock
) -> None:
    _enrol_and_send(client, nurture)
    clock.advance(timedelta(days=2, minutes=1))  # case_study fell due a minute ago

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "nurture_events_ingested_total",
        'nurture_webhooks_total{provider="sendgrid"}',
        "nurture_handoffs_created_total",
        "nurture_deliveries",
        "nurture_scheduler_lag_seconds",
    ):
        assert name in text
    assert 'nurture_deliveries{channel="email",status="sent"} 1.0' in text
    assert "nurture_scheduler_lag_seconds 60.0" in text
    assert "nurture_queue_depth" not in text  # the stub broker has no queues to measure


def test_metrics_count_unprocessed_events_and_the_age_of_the_oldest_failure(
    client: TestClient, nurture: App, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def gauges() -> list[str]:
        names = ("nurture_events_unprocessed", "nurture_oldest_failed_event_age_seconds")
        return [line for line in client.get("/metrics").text.splitlines() if line.startswith(names)]

    assert gauges() == [
        'nurture_events_unprocessed{status="pending"} 0.0',
        'nurture_events_unprocessed{status="failed"} 0.0',
        "nurture_oldest_failed_event_age_seconds 0.0",
    ]
    fault = JourneyFault(monkeypatch)
    _post(client, "form_submitted")
    clock.advance(timedelta(minutes=10))
    _post(client, "page_viewed")
    clock.advance(timedelta(minutes=5))

    assert gauges() == [
        'nurture_events_unprocessed{status="pending"} 0.0',
        'nurture_events_unprocessed{status="failed"} 2.0',
        "nurture_oldest_failed_event_age_seconds 900.0",
    ]
    fault.on = False
    run_due(nurture.sessions, nurture.rt)
    assert gauges()[1:] == [
        'nurture_events_unprocessed{status="failed"} 0.0',
        "nurture_oldest_failed_event_age_seconds 0.0",
    ]


def test_metrics_report_queue_depth_for_a_redis_broker(
    nurture: App, signer: SendGridSigner, redis_url: str
) -> None:
    namespace = f"nurture-api-{uuid.uuid4().hex[:8]}"
    broker = RedisBroker(url=redis_url, namespace=namespace)
    try:
        client = _client(nurture, signer, Tasks(broker, nurture))  # no worker: messages wait
        _post(client, "form_submitted")
        text = client.get("/metrics").text
    finally:
        broker.close()
        connection = redis.Redis.from_url(redis_url)
        for key in connection.scan_iter(f"{namespace}*"):
            connection.delete(key)
        connection.close()

    assert 'nurture_queue_depth{queue="journeys"} 1.0' in text
    assert 'nurture_queue_depth{queue="sends"} 0.0' in text


# --- Provider webhooks -----------------------------------------------------------------------


def _sendgrid(
    client: TestClient, signer: SendGridSigner, items: list[dict[str, Any]], forge: bool = False
) -> httpx.Response:
    body = json.dumps(items).encode()
    timestamp = "1772442000"
    signature = signer.sign(timestamp, body + (b" " if forge else b""))
    headers = {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": signature,
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        "Authorization": "",
    }
    return client.post("/webhooks/sendgrid", content=body, headers=headers)


def _click(delivery: Delivery) -> dict[str, Any]:
    return {
        "email": ANA_EMAIL,
        "timestamp": 1772442600,
        "event": "click",
        "sg_event_id": "evt-click-1",
        "sg_message_id": "W86EgYT6SQKk0lRflfLRsA.filter0001",
        "url": "https://acme.test/pricing",
        "delivery_id": delivery.id,
    }


def test_a_signed_sendgrid_click_is_scored_once_however_often_it_is_posted(
    client: TestClient, nurture: App, signer: SendGridSigner
) -> None:
    delivery = _enrol_and_send(client, nurture)
    items = [_click(delivery), {"event": "processed", "email": ANA_EMAIL}]

    first = _sendgrid(client, signer, items)
    again = _sendgrid(client, signer, items)

    assert first.status_code == again.status_code == 200, first.text
    assert first.json() == {"received": 1, "recorded": 1, "duplicates": 0, "ignored": 0}
    assert again.json() == {"received": 1, "recorded": 0, "duplicates": 1, "ignored": 0}
    assert _lead(nurture).engagement == 16.0  # form 10 + click 6, once
    assert 'nurture_webhooks_total{provider="sendgrid"} 2.0' in client.get("/metrics").text


def test_a_forged_or_unsigned_sendgrid_post_is_refused_and_records_nothing(
    client: TestClient, nurture: App, signer: SendGridSigner
) -> None:
    delivery = _enrol_and_send(client, nurture)
    events_before = _count(nurture, Event)

    forged = _sendgrid(client, signer, [_click(delivery)], forge=True)
    other_key = _sendgrid(client, SendGridSigner(), [_click(delivery)])
    unsigned = client.post("/webhooks/sendgrid", json=[_click(delivery)])

    assert forged.status_code == other_key.status_code == unsigned.status_code == 403
    assert _count(nurture, Event) == events_before


def test_sendgrid_posts_are_refused_without_a_public_key_unless_unsigned_ones_are_allowed(
    nurture: App,
) -> None:
    strict = TestClient(create_api(nurture, api_keys=[KEY], environ={}))
    lenient = TestClient(
        create_api(nurture, api_keys=[KEY], environ={}, allow_unsigned_webhooks=True)
    )

    assert strict.post("/webhooks/sendgrid", json=[]).status_code == 403
    assert lenient.post("/webhooks/sendgrid", json=[]).json()["received"] == 0
    assert lenient.post("/webhooks/sendgrid", json={"not": "a list"}).status_code == 400


def _feedback(delivery: Delivery, count: int) -> list[dict[str, Any]]:
    """SendGrid opens of Ana's welcome email, every tenth a click, each its own event."""
    return [
        {
            "email": ANA_EMAIL,
            "timestamp": 1772442600 + n,
            "event": "open" if n % 10 else "click",
            "sg_event_id": f"evt-{n}",
            "sg_message_id": "W86EgYT6SQKk0lRflfLRsA.filter0001",
            "delivery_id": delivery.id,
        }
        for n in range(count)
    ]


def test_a_sendgrid_post_of_50_events_is_recorded_in_one_transaction_and_one_pass(
    client: TestClient,
    nurture: App,
    signer: SendGridSigner,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    delivery = _enrol_and_send(client, nurture)
    items = _feedback(delivery, 49)
    items.append(items[3])  # SendGrid repeats an event within a post
    passes: list[int] = []
    real = feedback.record

    def counted(session: Any, rt: Any, events: Any) -> Any:
        passes.append(len(events))
        return real(session, rt, events)

    monkeypatch.setattr(feedback, "record", counted)
    transactions: list[object] = []

    def begun(connection: object) -> None:
        transactions.append(connection)

    sa_event.listen(db, "begin", begun)
    try:
        response = _sendgrid(client, signer, items)
    finally:
        sa_event.remove(db, "begin", begun)

    assert response.status_code == 200, response.text
    assert response.json() == {"received": 50, "recorded": 49, "duplicates": 1, "ignored": 0}
    assert len(transactions) == 1
    assert passes == [50]
    assert _count(nurture, Event) == 1 + 49
    assert _lead(nurture).engagement == 10.0 + 5 * 6  # the form and five clicks, once each


def test_a_database_failure_in_a_sendgrid_post_writes_none_of_it_and_answers_503_for_a_retry(
    client: TestClient, nurture: App, signer: SendGridSigner, db: Engine
) -> None:
    delivery = _enrol_and_send(client, nurture)
    bounce = {
        "email": ANA_EMAIL,
        "timestamp": 1772442700,
        "event": "bounce",
        "type": "bounce",
        "reason": "550 5.1.1 unknown user",
        "sg_event_id": "evt-bounce",
        "delivery_id": delivery.id,
    }
    items = [*_feedback(delivery, 20), bounce]  # the bounce's suppression is written last

    def disk_full(
        connection: Any, cursor: Any, statement: str, parameters: Any, *args: Any
    ) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO SUPPRESSIONS"):
            raise OperationalError(statement, parameters, Exception("disk full"))

    sa_event.listen(db, "before_cursor_execute", disk_full)
    try:
        failed = _sendgrid(client, signer, items)
    finally:
        sa_event.remove(db, "before_cursor_execute", disk_full)

    assert failed.status_code == 503, failed.text
    assert _count(nurture, Event) == 1  # the form only: the opens and clicks went back too
    assert _count(nurture, Suppression) == 0
    assert (_lead(nurture).engagement, _lead(nurture).email_consent) == (10.0, True)

    retried = _sendgrid(client, signer, items)  # SendGrid posts the batch again

    assert retried.json() == {"received": 21, "recorded": 21, "duplicates": 0, "ignored": 0}
    assert _count(nurture, Event) == 1 + 21
    assert _count(nurture, Suppression) == 1
    assert (_lead(nurture).engagement, _lead(nurture).email_consent) == (22.0, False)


def _twilio(
    client: TestClient, path: str, params: dict[str, str], *, query: str = "", token: str = ""
) -> httpx.Response:
    url = f"{PUBLIC_URL}/webhooks/twilio/{path}" + (f"?{query}" if query else "")
    signature = RequestValidator(token or TWILIO_TOKEN).compute_signature(url, params)
    target = f"/webhooks/twilio/{path}" + (f"?{query}" if query else "")
    headers = {"X-Twilio-Signature": signature, "Authorization": ""}
    return client.post(target, data=params, headers=headers)


def test_a_signed_twilio_status_callback_is_recorded_against_its_delivery(
    client: TestClient, nurture: App
) -> None:
    _post(client, "form_submitted")
    params = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "delivered", "To": ANA_PHONE}

    response = _twilio(client, "status", params, query="delivery_id=none")
    forged = _twilio(client, "status", params | {"MessageStatus": "failed"}, token="other")

    assert response.status_code == 200, response.text
    assert response.json()["recorded"] == 1
    assert forged.status_code == 403
    with nurture.sessions() as s:
        types = set(s.scalars(select(Event.type)))
    assert types == {"form_submitted", "sms_delivered"}


TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
STOPPED = (
    "You are unsubscribed from Acme Analytics messages. No more messages will be sent. "
    "Reply START to resubscribe."
)


def _twiml_reply(text: str) -> str:
    return f'<?xml version="1.0" encoding="UTF-8"?><Response><Message>{text}</Message></Response>'


def test_an_inbound_stop_turns_sms_consent_off_and_is_confirmed_once(
    client: TestClient, nurture: App
) -> None:
    _post(client, "form_submitted")
    stop = {"MessageSid": "SM" + "2" * 32, "From": "+1 500 555 0001", "To": "+15005550006"}

    forged = _twilio(client, "inbound", stop | {"Body": "STOP"}, token="other")
    assert forged.status_code == 403
    assert _lead(nurture).sms_consent is True

    response = _twilio(client, "inbound", stop | {"Body": "stop"})
    replayed = _twilio(client, "inbound", stop | {"Body": "stop"})  # Twilio redelivers it

    assert response.status_code == replayed.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    assert response.text == _twiml_reply(STOPPED)
    assert replayed.text == TWIML_EMPTY  # no second confirmation
    assert _lead(nurture).sms_consent is False
    with nurture.sessions() as s:
        suppressed = s.scalars(select(Suppression)).one()
        assert s.scalar(select(func.count()).where(Event.type == "sms_opted_out")) == 1
    assert (suppressed.channel, suppressed.address) == ("sms", ANA_PHONE)


def test_an_inbound_help_is_answered_with_the_configured_help_text_escaped_once(
    nurture: App, signer: SendGridSigner
) -> None:
    help_text = "Ben & Jerry's <Ice Cream>: reply STOP to opt out."
    settings = replace(nurture.settings, sms_help_text=help_text)
    client = _client(replace(nurture, settings=settings), signer)
    _post(client, "form_submitted")
    help_ = {"MessageSid": "SM" + "4" * 32, "From": ANA_PHONE, "Body": " help "}

    response = _twilio(client, "inbound", help_)
    replayed = _twilio(client, "inbound", help_)

    assert response.text == _twiml_reply(
        "Ben &amp; Jerry's &lt;Ice Cream&gt;: reply STOP to opt out."
    )
    assert replayed.text == TWIML_EMPTY
    assert _lead(nurture).sms_consent is True


def test_the_default_help_text_names_the_company() -> None:
    settings = Settings.from_env({"NURTURE_COMPANY_NAME": "Northwind"})
    assert settings.sms_help_text == "Northwind: reply STOP to opt out. Msg&data rates may apply."
    custom = Settings.from_env({"NURTURE_SMS_HELP_TEXT": "Call 555-0100 for help."})
    assert custom.sms_help_text == "Call 555-0100 for help."


def test_keywords_twilio_answered_itself_with_advanced_opt_out_get_no_second_answer(
    client: TestClient, nurture: App
) -> None:
    _post(client, "form_submitted")
    base = {"From": ANA_PHONE, "To": "+15005550006"}
    stop = base | {"MessageSid": "SM" + "6" * 32, "Body": "Stop", "OptOutType": "STOP"}
    help_ = base | {"MessageSid": "SM" + "7" * 32, "Body": "Help", "OptOutType": "HELP"}

    assert _twilio(client, "inbound", stop).text == TWIML_EMPTY
    assert _twilio(client, "inbound", help_).text == TWIML_EMPTY
    assert _lead(nurture).sms_consent is False  # the opt-out itself still counts


def test_a_reply_gets_no_answer(client: TestClient, nurture: App) -> None:
    reply = {"MessageSid": "SM" + "8" * 32, "From": ANA_PHONE, "Body": "Sounds good"}
    _post(client, "form_submitted")

    assert _twilio(client, "inbound", reply).text == TWIML_EMPTY


def test_a_stop_from_a_number_no_lead_has_suppresses_it_and_is_confirmed_once(
    client: TestClient, nurture: App
) -> None:
    stranger = {"MessageSid": "SM" + "9" * 32, "From": "+15005559999", "Body": "STOP"}

    first = _twilio(client, "inbound", stranger).text
    replayed = _twilio(client, "inbound", stranger).text

    assert "You are unsubscribed" in first
    assert replayed == TWIML_EMPTY
    with nurture.sessions() as s:
        rows = s.execute(select(Suppression.channel, Suppression.address)).all()
    assert [tuple(r) for r in rows] == [("sms", "+15005559999")]


def test_twilio_posts_are_refused_when_no_auth_token_is_configured(nurture: App) -> None:
    client = TestClient(create_api(nurture, api_keys=[KEY], environ={}))
    params = {"MessageSid": "SM" + "3" * 32, "From": ANA_PHONE, "Body": "hi"}

    response = _twilio(client, "inbound", params)

    assert response.status_code == 403
    assert "TWILIO_AUTH_TOKEN" in response.json()["detail"]


# --- One-click unsubscribe -------------------------------------------------------------------


def test_opening_the_unsubscribe_link_shows_a_page_and_changes_nothing(
    client: TestClient, nurture: App
) -> None:
    _enrol_and_send(client, nurture)
    token = make_token(SECRET, _lead(nurture).id, "drip")

    page = client.get(f"/u/{token}", headers={"Authorization": ""})

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<form method="post">' in page.text  # no action: back to this very URL
    assert 'name="choice" value="topic"' in page.text
    assert 'name="choice" value="all"' in page.text
    assert _lead(nurture).email_consent is True
    assert _count(nurture, Suppression) == 0
    assert _count(nurture, TopicOptOut) == 0


def test_leaving_every_email_on_the_page_opts_out_suppresses_and_ends_the_sequence_once(
    client: TestClient, nurture: App
) -> None:
    _enrol_and_send(client, nurture)
    token = make_token(SECRET, _lead(nurture).id, "drip")
    form = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": ""}

    for _ in range(2):
        response = client.post(
            f"/u/{token}", content=b"choice=all", headers=form, follow_redirects=False
        )
        assert response.status_code == 200
        assert "You are unsubscribed" in response.text
        assert "set-cookie" not in response.headers

    lead = _lead(nurture)
    assert lead.email_consent is False
    with nurture.sessions() as s:
        assert s.scalars(select(Suppression.address)).all() == [ANA_EMAIL]
        assert s.scalars(select(Enrolment.status)).all() == ["exited"]
        unsubscribes = s.scalars(select(Event).where(Event.type == "unsubscribed")).all()
    assert [e.idempotency_key for e in unsubscribes] == [f"unsubscribe:{token}"]


def test_a_forged_unsubscribe_token_is_refused_and_changes_nothing(
    client: TestClient, nurture: App
) -> None:
    _enrol_and_send(client, nurture)
    lead_id = _lead(nurture).id
    forged = make_token("not-our-secret", lead_id, "drip")
    genuine = make_token(SECRET, lead_id, "drip")
    altered = genuine.replace(f"{lead_id}.", f"{lead_id + 1}.", 1)

    for token in (forged, altered, "garbage"):
        assert client.get(f"/u/{token}").status_code == 404
        assert client.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click").status_code == 404

    assert _lead(nurture).email_consent is True
    assert _count(nurture, Suppression) == 0
    with nurture.sessions() as s:
        assert s.scalars(select(Enrolment.status)).all() == ["active"]
