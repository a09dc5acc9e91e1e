"""`POST /v1/leads/{key}/merge` and `GET /v1/conflicts` on SQLite and PostgreSQL: one lead
out of two with both pasts, its work handed on after commit, 404 and 409 as documented, and
the conflicts a call naming two leads leaves until they are merged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from engine.app import App
from engine.clock import FrozenClock
from engine.funnel.erasure import erase_lead
from engine.funnel.service import Outcome
from engine.http.api import create_api
from engine.models import ErasureReason, Event, Lead, ScoreEntry
from tests.apps import outbox_app

KEY = "merge-key-0123456789abcdef-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
ANA, PHONE = "ana@northwind.test", "+14155550100"


class Recorder:
    """Stands in for the workers: keeps the outcomes handed to them after commit."""

    def __init__(self) -> None:
        self.broker = StubBroker()
        self.outcomes: list[Outcome] = []

    def follow_up(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def start_job(self, job_id: str) -> None:
        raise AssertionError(f"no job expected, got {job_id}")


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    return outbox_app(db, clock, tmp_path)


@pytest.fixture
def workers() -> Recorder:
    return Recorder()


@pytest.fixture
def client(nurture: App, workers: Recorder) -> TestClient:
    return TestClient(create_api(nurture, workers, api_keys=[KEY], environ={}), headers=AUTH)


def _event(client: TestClient, lead: dict[str, Any], type_: str) -> dict[str, Any]:
    response = client.post("/v1/events", json={"lead": lead, "type": type_})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _two_leads(client: TestClient) -> None:
    """Ana by email (18 points, lead) and a VP by phone (30 points and fit 10, mql)."""
    _event(client, {"email": ANA}, "content_downloaded")
    _event(client, {"email": ANA}, "form_submitted")
    assert _event(client, {"phone": PHONE, "title": "VP Sales"}, "demo_requested")["lead_id"] == 2


def test_merge_answers_the_survivor_with_both_pasts_and_hands_its_handoff_to_the_workers(
    client: TestClient, nurture: App, workers: Recorder
) -> None:
    _two_leads(client)
    workers.outcomes.clear()

    response = client.post(f"/v1/leads/{ANA}/merge", json={"other": PHONE})

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["email"], body["phone"], body["stage"]) == (1, ANA, PHONE, "sql")
    assert body["score"] == {"total": 58.0, "fit": 10.0, "engagement": 48.0}
    assert (body["merged"], body["merged_id"]) == (PHONE, 2)
    assert body["moved"]["events"] == 1 and body["aliases"] == [] and body["collapsed"] == []
    assert body["handoff_id"] is not None
    assert [o.handoff_id for o in workers.outcomes] == [body["handoff_id"]]
    with nurture.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Lead)) == 1
        assert s.scalar(select(func.count()).where(Event.lead_id == 1)) == 3
        ledger = s.scalar(select(func.sum(ScoreEntry.points)).where(ScoreEntry.lead_id == 1))
    assert ledger == 58.0
    assert client.get(f"/v1/leads/{PHONE}").json()["lead"]["id"] == 1


def test_an_email_the_survivor_already_had_one_of_stays_an_alias_that_names_it(
    client: TestClient,
) -> None:
    _event(client, {"email": ANA}, "content_downloaded")
    _event(client, {"email": "ana.old@northwind.test"}, "content_downloaded")

    body = client.post("/v1/leads/1/merge", json={"other": "ana.old@northwind.test"}).json()

    assert body["aliases"] == [{"field": "email", "value": "ana.old@northwind.test"}]
    assert body["collapsed"] == [2]  # both ran the drip: the older run goes on
    assert client.get("/v1/leads/ana.old@northwind.test").json()["lead"]["id"] == 1
    again = _event(client, {"email": "ana.old@northwind.test"}, "page_viewed")
    assert again["lead_id"] == 1


def test_merge_is_404_for_an_unknown_lead_on_either_side(client: TestClient) -> None:
    _two_leads(client)

    unknown_path = client.post("/v1/leads/nobody@x.test/merge", json={"other": PHONE})
    unknown_other = client.post(f"/v1/leads/{ANA}/merge", json={"other": "999"})
    no_phone = client.post(f"/v1/leads/{ANA}/merge", json={"other": "+12"})

    assert [r.status_code for r in (unknown_path, unknown_other, no_phone)] == [404, 404, 404]
    assert unknown_other.json()["detail"] == "no lead with id 999"
    assert client.get(f"/v1/leads/{PHONE}").json()["lead"]["id"] == 2  # nothing merged


def test_merge_is_409_for_one_lead_twice_or_an_erased_lead(
    client: TestClient, nurture: App
) -> None:
    _two_leads(client)
    with nurture.sessions.begin() as s:
        erase_lead(s, nurture.rt, 2, ErasureReason.REQUEST, "test")

    same = client.post(f"/v1/leads/{ANA}/merge", json={"other": "1"})
    erased = client.post(f"/v1/leads/{ANA}/merge", json={"other": "2"})

    assert (same.status_code, same.json()["detail"]) == (
        409,
        "a lead cannot be merged with itself",
    )
    assert (erased.status_code, erased.json()["detail"]) == (
        409,
        "lead 2 is erased: there is nothing to merge",
    )


def test_merge_refuses_a_body_without_other_or_with_unknown_keys(client: TestClient) -> None:
    _two_leads(client)

    missing = client.post(f"/v1/leads/{ANA}/merge", json={})
    extra = client.post(f"/v1/leads/{ANA}/merge", json={"other": PHONE, "keep": "both"})
    number = client.post(f"/v1/leads/{ANA}/merge", json={"other": 2})

    assert [r.status_code for r in (missing, extra, number)] == [422, 422, 422]
    assert [e["loc"] for e in extra.json()["detail"]] == [["body", "keep"]]


def test_merge_and_conflicts_need_an_api_key(client: TestClient) -> None:
    _two_leads(client)
    anonymous = {"Authorization": ""}

    merge = client.post(f"/v1/leads/{ANA}/merge", json={"other": PHONE}, headers=anonymous)
    conflicts = client.get("/v1/conflicts", headers=anonymous)

    assert (merge.status_code, conflicts.status_code) == (401, 401)
    assert client.get(f"/v1/leads/{PHONE}").json()["lead"]["id"] == 2


def test_conflicts_list_a_call_naming_two_leads_until_they_are_merged(
    client: TestClient, clock: FrozenClock
) -> None:
    _two_leads(client)
    assert client.get("/v1/conflicts").json() == []

    named = _event(client, {"email": ANA, "phone": PHONE}, "page_viewed")

    assert named["lead_id"] == 1  # the event lands on the lead its email names
    [conflict] = client.get("/v1/conflicts").json()
    assert conflict == {
        "lead_id": 1,
        "lead": ANA,
        "other_id": 2,
        "other": PHONE,
        "field": "phone",
        "value": PHONE,
        "source": "api",
        "first_seen_at": clock.now().isoformat().replace("+00:00", "Z"),
        "last_seen_at": clock.now().isoformat().replace("+00:00", "Z"),
        "times": 1,
    }
    assert client.get(f"/v1/leads/{ANA}").json()["lead"]["phone"] is None
    assert client.post("/v1/leads/1/merge", json={"other": "2"}).status_code == 200
    assert client.get("/v1/conflicts").json() == []
