"""Segment-spec ingestion on SQLite and PostgreSQL: the fixtures (identify, track, page, alias, a
batch, a replay) give the expected leads and events; anonymous views join the lead once, in
time order, within caps; write keys, validation with field paths, the event name mapping."""

from __future__ import annotations

import base64
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from engine.app import App
from engine.clock import FrozenClock
from engine.errors import ConfigurationError
from engine.http.api import create_api
from engine.models import Event, Lead, ScoreEntry, Stage, Visitor, VisitorEvent
from tests.apps import outbox_app
from tests.engine.conftest import SHIPPED

FIXTURES = Path(__file__).parent / "fixtures" / "segment"
API_KEY = "test-key-0123456789abcdef-0123456789"
WRITE_KEY = "wk_8f3b2c1d9e7a6b5c4d3e2f1a0b9c8d7e"
ANON = "3f2a9c4e-6b1d-4e8a-a7c2-5d9b0e1f4a63"
USER = "usr_97980cfea0067"
EMAIL = "Peter.Gibbons@initech.example"  # as the fixtures' traits write it


def _basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())  # type: ignore[no-any-return]


def _app(db: Engine, clock: FrozenClock, tmp_path: Path, workflows: Path = SHIPPED) -> App:
    return outbox_app(db, clock, tmp_path, workflows)


def _client(app: App, **environ: str) -> TestClient:
    env = {"NURTURE_SEGMENT_WRITE_KEYS": WRITE_KEY, **environ}
    api = create_api(app, api_keys=[API_KEY], environ=env)
    return TestClient(api, headers=_basic(WRITE_KEY))


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    """The shipped workflows (scoring.yml and sources.yml as marketers get them)."""
    return _app(db, clock, tmp_path)


@pytest.fixture
def client(nurture: App) -> TestClient:
    return _client(nurture)


def _post(client: TestClient, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["success"] is True
    return answer["calls"]  # type: ignore[no-any-return]


def _loc(response: httpx.Response) -> list[list[Any]]:
    assert response.status_code == 422, response.text
    return [item["loc"] for item in response.json()["detail"]]


def _count(app: App, model: Any) -> int:
    with app.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _lead(app: App) -> Lead:
    with app.sessions() as s:
        return s.scalars(select(Lead).where(Lead.external_id == USER)).one()


def _engagement(app: App) -> list[tuple[str, float, datetime]]:
    with app.sessions() as s:
        rows = s.scalars(
            select(ScoreEntry).where(ScoreEntry.kind == "engagement").order_by(ScoreEntry.id)
        )
        return [(row.rule, row.points, row.occurred_at) for row in rows]


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# --- The fixtures ----------------------------------------------------------------------------


def test_an_identify_upserts_the_lead_from_userid_and_traits(
    client: TestClient, nurture: App
) -> None:
    [call] = _post(client, "/v1/segment", _fixture("identify"))

    lead = _lead(nurture)
    assert call["status"] == "identified" and call["lead_id"] == lead.id
    assert (lead.email, lead.first_name, lead.last_name) == (EMAIL, "Peter", "Gibbons")
    assert (lead.company, lead.title, lead.timezone) == (
        "Initech",
        "VP Engineering",
        "America/Chicago",
    )
    # sources.yml maps `employees` to the field a fit rule reads; objects are no field values
    assert lead.fields == {
        "company_size": 120,
        "plan": "trial",
        "createdAt": "2026-03-02T08:59:00.000Z",
    }
    assert lead.fit == 20 and lead.stage == Stage.MQL  # mql: 20 in the shipped scoring.yml
    with nurture.sessions() as s:
        assert s.get_one(Visitor, ANON).lead_id == lead.id


def test_a_track_records_the_mapped_event_with_its_properties_and_time(
    client: TestClient, nurture: App
) -> None:
    [call] = _post(client, "/v1/segment", _fixture("track"))

    assert call["status"] == "recorded"
    with nurture.sessions() as s:
        event = s.scalars(select(Event)).one()
    assert (event.type, event.source) == ("content_downloaded", "segment")
    assert event.idempotency_key == f"segment:{_fixture('track')['messageId']}"
    assert event.properties["title"] == "The 2026 Analytics Benchmark"
    assert event.occurred_at == _at("2026-03-02T08:59:30Z")
    assert _engagement(nurture) == [("content_download", 8.0, _at("2026-03-02T08:59:30Z"))]


def test_an_anonymous_page_is_kept_for_the_visitor_unscored(
    client: TestClient, nurture: App
) -> None:
    [call] = _post(client, "/v1/segment", _fixture("page"))

    assert call["status"] == "stored" and call["lead_id"] is None
    assert _count(nurture, Lead) == 0 and _count(nurture, Event) == 0
    with nurture.sessions() as s:
        stored = s.scalars(select(VisitorEvent)).one()
    assert (stored.visitor_id, stored.type) == (ANON, "page_viewed")
    assert stored.properties["url"] == "https://acme.example/pricing?plan=team"
    assert stored.properties["name"] == "Pricing"


def test_a_page_then_an_identify_gives_one_lead_with_the_view_scored(
    client: TestClient, nurture: App
) -> None:
    _post(client, "/v1/segment/page", _fixture("page"))
    [call] = _post(client, "/v1/segment/identify", _fixture("identify"))

    assert call["stitched"] == 1
    assert _engagement(nurture) == [("pricing_page_view", 7.0, _at("2026-03-01T16:20:00Z"))]
    assert _count(nurture, VisitorEvent) == 0


def test_the_batch_joins_the_anonymous_views_to_the_lead_in_time_order_within_the_cap(
    client: TestClient, nurture: App
) -> None:
    calls = _post(client, "/v1/segment/batch", _fixture("batch"))

    assert [c["status"] for c in calls] == [
        *["stored"] * 5,
        "identified",
        "recorded",
        "recorded",
        "ignored",
        "recorded",
    ]
    assert calls[5]["stitched"] == 5
    lead = _lead(nurture)
    assert {c["lead_id"] for c in calls[5:8]} == {lead.id}
    # pricing scores once per day: the views of Feb 27 and of Mar 1, 16:20; not the others
    assert _engagement(nurture) == [
        ("pricing_page_view", 7.0, _at("2026-02-27T14:03:20Z")),
        ("pricing_page_view", 7.0, _at("2026-03-01T16:20:00Z")),
        ("content_download", 8.0, _at("2026-03-02T08:59:30Z")),
    ]
    assert (lead.fit, lead.engagement, lead.stage) == (20, 22, Stage.MQL)
    with nurture.sessions() as s:
        types = s.scalars(select(Event.type).order_by(Event.occurred_at)).all()
    assert types == [*["page_viewed"] * 5, "content_downloaded", "trial_started", "page_viewed"]


def test_a_replayed_batch_or_a_second_identify_counts_each_call_once(
    client: TestClient, nurture: App
) -> None:
    _post(client, "/v1/segment/batch", _fixture("batch"))
    replayed = _post(client, "/v1/segment/batch", _fixture("batch"))
    again = _post(client, "/v1/segment", _fixture("identify"))

    assert [c["status"] for c in replayed] == [
        *["duplicate"] * 5,
        "identified",
        "duplicate",
        "duplicate",
        "ignored",
        "duplicate",
    ]
    assert again[0]["stitched"] == 0
    assert _count(nurture, Event) == 8 and _count(nurture, Lead) == 1
    assert len(_engagement(nurture)) == 3


def test_an_alias_joins_the_previous_anonymous_id_to_the_lead(
    client: TestClient, nurture: App
) -> None:
    _post(client, "/v1/segment/identify", _fixture("identify"))
    mobile = {**_fixture("page"), "anonymousId": "a1b2c3d4-mobile-77", "messageId": "ios-1"}
    assert _post(client, "/v1/segment", mobile)[0]["status"] == "stored"

    [call] = _post(client, "/v1/segment", _fixture("alias"))
    later = {**mobile, "messageId": "ios-2", "timestamp": "2026-03-02T08:59:50Z"}
    [after] = _post(client, "/v1/segment", later)

    lead = _lead(nurture)
    assert (call["status"], call["stitched"], call["lead_id"]) == ("identified", 1, lead.id)
    assert (after["status"], after["lead_id"]) == ("recorded", lead.id)
    with nurture.sessions() as s:
        assert s.get_one(Visitor, "a1b2c3d4-mobile-77").lead_id == lead.id


def test_an_alias_of_two_leads_user_ids_merges_nothing(client: TestClient, nurture: App) -> None:
    _post(client, "/v1/segment", {"type": "identify", "userId": "usr_old"})
    _post(client, "/v1/segment", {"type": "identify", "userId": USER})
    alias = {**_fixture("alias"), "previousId": "usr_old"}

    [call] = _post(client, "/v1/segment", alias)

    assert call["status"] == "ignored" and "not merged" in call["detail"]
    assert _count(nurture, Visitor) == 0


def test_an_alias_of_two_anonymous_ids_keeps_their_events_as_one_until_identified(
    client: TestClient, nurture: App
) -> None:
    mobile = {**_fixture("page"), "anonymousId": "a1b2c3d4-mobile-77", "messageId": "ios-1"}
    _post(client, "/v1/segment", mobile)
    alias = {**_fixture("alias"), "userId": None, "anonymousId": ANON}

    [joined] = _post(client, "/v1/segment/alias", alias)
    [identified] = _post(client, "/v1/segment", _fixture("identify"))

    assert joined["status"] == "anonymous"
    assert identified["stitched"] == 1
    assert _count(nurture, Event) == 1


def test_the_write_key_may_come_in_the_body_and_any_configured_key_is_taken(
    nurture: App,
) -> None:
    keys = f"wk_other-0123456789-0123456789-0123, {WRITE_KEY}"
    api = create_api(nurture, api_keys=[API_KEY], environ={"NURTURE_SEGMENT_WRITE_KEYS": keys})
    with TestClient(api) as client:
        response = client.post("/v1/segment", json={**_fixture("track"), "writeKey": WRITE_KEY})
    assert response.status_code == 200, response.text


# --- Keys ------------------------------------------------------------------------------------


def test_a_missing_or_wrong_write_key_is_refused_before_the_body_is_read(
    client: TestClient, nurture: App
) -> None:
    wrong = client.post("/v1/segment", json=_fixture("track"), headers=_basic("wk_wrong"))
    missing = client.post("/v1/segment", json={"type": "nonsense"}, headers={"Authorization": ""})
    api_key = client.post(
        "/v1/segment", json=_fixture("track"), headers={"Authorization": f"Bearer {API_KEY}"}
    )
    in_body = client.post(
        "/v1/segment",
        json={**_fixture("track"), "writeKey": "wk_wrong"},
        headers={"Authorization": ""},
    )

    for response in (wrong, missing, api_key, in_body):
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert _count(nurture, Event) == 0


def test_without_write_keys_there_is_no_segment_endpoint(nurture: App) -> None:
    with TestClient(create_api(nurture, api_keys=[API_KEY], environ={})) as client:
        response = client.post("/v1/segment", json=_fixture("track"), headers=_basic(WRITE_KEY))
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("key", "why"), [("short", "at least 32"), ("change-me-please", "placeholder")]
)
def test_a_weak_write_key_is_refused_at_start(nurture: App, key: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match=f"NURTURE_SEGMENT_WRITE_KEYS.*{why}"):
        create_api(nurture, api_keys=[API_KEY], environ={"NURTURE_SEGMENT_WRITE_KEYS": key})


# --- Validation ------------------------------------------------------------------------------


def test_bad_calls_of_a_batch_are_answered_invalid_naming_the_field_and_the_rest_recorded(
    client: TestClient, nurture: App
) -> None:
    body = _fixture("batch")
    body["batch"][5]["traits"]["email"] = "peter at initech"
    body["batch"][6].pop("event")

    calls = _post(client, "/v1/segment/batch", body)

    assert [c["status"] for c in calls[5:7]] == ["invalid", "invalid"]
    assert calls[5]["detail"].startswith("traits.email: ")
    assert calls[6]["detail"].startswith("event: a track call needs an event name")
    assert all(c["status"] != "invalid" for c in calls[:5] + calls[7:])
    with nurture.sessions() as s:
        emails = set(s.scalars(select(Lead.email)))
    assert "peter at initech" not in emails


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"type": "purchase"}, ["body", "type"]),
        ({"type": None}, ["body", "type"]),
        ({"userId": None}, ["body", "userId"]),
        ({"messageId": "m" * 200}, ["body", "messageId"]),
        ({"timestamp": "2026-03-02 08:59"}, ["body", "timestamp"]),
        ({"properties": ["not", "an", "object"]}, ["body", "properties"]),
        ({"anonymousId": " "}, ["body", "anonymousId"]),
    ],
)
def test_a_bad_call_is_a_422_naming_the_field(
    client: TestClient, change: dict[str, Any], loc: list[Any]
) -> None:
    body = {**_fixture("track"), **change}
    assert _loc(client.post("/v1/segment", json=body)) == [loc]


def test_a_call_of_a_batch_that_cannot_be_taken_is_answered_invalid_and_the_rest_recorded(
    client: TestClient, nurture: App
) -> None:
    batch = _fixture("batch")
    batch["batch"][2]["timestamp"] = "2026-03-05T00:00:00Z"
    calls = _post(client, "/v1/segment/batch", batch)

    assert calls[2]["status"] == "invalid"
    assert calls[2]["detail"].startswith("batch[2].timestamp: more than a day ahead")
    assert all(c["status"] != "invalid" for i, c in enumerate(calls) if i != 2)
    taken = {c["messageId"] for c in calls if c["status"] in ("recorded", "stored")}
    with nurture.sessions() as s:
        keys = set(s.scalars(select(Event.idempotency_key))) | set(
            s.scalars(select(VisitorEvent.idempotency_key))
        )
    assert {f"segment:{m}" for m in taken} <= keys
    assert f"segment:{calls[2]['messageId']}" not in keys


def test_a_typed_path_takes_calls_without_a_type_and_refuses_another_type(
    client: TestClient,
) -> None:
    track = {k: v for k, v in _fixture("track").items() if k != "type"}
    assert _post(client, "/v1/segment/track", track)[0]["status"] == "recorded"
    assert _loc(client.post("/v1/segment/page", json=_fixture("track"))) == [["body", "type"]]


def test_a_time_beyond_tomorrow_is_a_conflict_and_a_skewed_client_clock_is_corrected(
    client: TestClient, nurture: App
) -> None:
    future = {**_fixture("track"), "timestamp": "2026-03-05T00:00:00Z"}
    response = client.post("/v1/segment", json=future)
    assert response.status_code == 409
    assert response.json()["detail"].startswith("timestamp: more than a day ahead")
    assert _count(nurture, VisitorEvent) == 0

    # the client's clock runs two days ahead: sentAt - originalTimestamp is what counts
    skewed = {
        **_fixture("track"),
        "timestamp": None,
        "originalTimestamp": "2026-03-04T08:59:00Z",
        "sentAt": "2026-03-04T09:00:00Z",
    }
    _post(client, "/v1/segment", skewed)
    with nurture.sessions() as s:
        assert s.scalars(select(Event.occurred_at)).one() == _at("2026-03-02T08:59:00Z")


# --- The mapping in sources.yml --------------------------------------------------------------


def test_an_unmapped_event_is_kept_in_snake_case_or_dropped_as_sources_yml_says(
    db: Engine, clock: FrozenClock, tmp_path: Path
) -> None:
    kept = _post(
        _client(_app(db, clock, tmp_path)),
        "/v1/segment",
        {**_fixture("track"), "event": "Trial Started"},
    )
    folder = tmp_path / "dropping"
    shutil.copytree(SHIPPED, folder)
    sources = (folder / "sources.yml").read_text().replace("unmapped: keep", "unmapped: drop")
    (folder / "sources.yml").write_text(sources)
    dropping = _app(db, clock, tmp_path, folder)
    dropped = _post(
        _client(dropping),
        "/v1/segment",
        {**_fixture("track"), "event": "Order Completed", "messageId": "m2"},
    )

    assert kept[0]["status"] == "recorded"
    assert dropped[0]["status"] == "dropped"
    assert "'Order Completed': not mapped in sources.yml" in dropped[0]["detail"]
    with dropping.sessions() as s:
        assert s.scalars(select(Event.type)).all() == ["trial_started"]
