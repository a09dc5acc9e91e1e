"""`GET /v1/leads/{key}/export` and `DELETE /v1/leads/{key}` on SQLite and PostgreSQL: keys
required, unknown and erased leads are 404s naming the key, an erasure answers its summary."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from engine.app import App
from engine.clock import FrozenClock
from engine.http.api import create_api
from engine.models import Erasure
from tests.apps import outbox_app
from tests.engine.privacy import EMAIL_ADDRESS, person, personal_data_left

KEY = "privacy-key-0123456789abcdef-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    return outbox_app(db, clock, tmp_path)


@pytest.fixture
def client(nurture: App) -> TestClient:
    return TestClient(create_api(nurture, None, api_keys=[KEY], environ={}), headers=AUTH)


def test_export_and_erase_need_an_api_key(client: TestClient) -> None:
    for method in ("GET", "DELETE"):
        path = "/v1/leads/a@x.test/export" if method == "GET" else "/v1/leads/a@x.test"
        answer = client.request(method, path, headers={"Authorization": "Bearer wrong-key"})
        assert answer.status_code == 401, (method, answer.text)


def test_unknown_keys_are_404s_that_name_the_key(client: TestClient) -> None:
    asked = [
        ("GET", "/v1/leads/nobody@x.test/export", "nobody@x.test"),
        ("DELETE", "/v1/leads/nobody@x.test", "nobody@x.test"),
        ("DELETE", "/v1/leads/+12", "+12"),
        ("GET", "/v1/leads/424242/export", "424242"),
    ]
    for method, path, key in asked:
        answer = client.request(method, path)
        assert answer.status_code == 404, answer.text
        assert key in answer.json()["detail"]


def test_a_lead_is_exported_then_erased_once_and_gone_by_its_email(
    client: TestClient, nurture: App, clock: FrozenClock, db: Engine
) -> None:
    anastasia = person(nurture, clock)

    export = client.get(f"/v1/leads/{EMAIL_ADDRESS}/export")
    erased = client.delete(f"/v1/leads/{EMAIL_ADDRESS}")
    again = client.delete(f"/v1/leads/{anastasia.lead_id}")
    by_email = client.get(f"/v1/leads/{EMAIL_ADDRESS}/export")

    assert export.status_code == 200, export.text
    assert export.json()["lead"]["email"] == EMAIL_ADDRESS
    assert export.json()["visitors"][0]["events"]
    assert {"consents", "aliases", "conflicts"} <= export.json().keys()  # none dropped
    assert erased.status_code == 200, erased.text
    body = erased.json()
    assert (body["lead_id"], body["reason"], body["via"]) == (anastasia.lead_id, "request", "api")
    assert body["summary"]["scrubbed"]["events"] == len(export.json()["events"])
    assert again.status_code == 404 and "already erased" in again.json()["detail"]
    assert by_email.status_code == 404 and EMAIL_ADDRESS in by_email.json()["detail"]
    assert personal_data_left(db) == []
    with nurture.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Erasure)) == 1


def test_the_dashboard_shows_an_erased_lead_as_erased_without_its_sales_actions(
    nurture: App, clock: FrozenClock
) -> None:
    anastasia = person(nurture, clock)
    dashboard = TestClient(create_api(nurture, None, api_keys=[], allow_no_auth=True, environ={}))
    assert 'id="won"' in dashboard.get(f"/leads/{anastasia.lead_id}").text

    assert dashboard.delete(f"/v1/leads/{anastasia.lead_id}").status_code == 200
    page = dashboard.get(f"/leads/{anastasia.lead_id}")

    assert page.status_code == 200, page.text
    assert f"lead {anastasia.lead_id}" in page.text
    assert f"erased {clock.now():%Y-%m-%d}" in page.text
    assert 'id="won"' not in page.text and 'id="recycle"' not in page.text
    assert EMAIL_ADDRESS not in page.text
