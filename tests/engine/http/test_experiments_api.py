"""Experiments through the API and the dashboard, on SQLite and PostgreSQL: leads that fill in
a form draw a variant of the welcome email or fall in the holdout, and the overview, the
sequence report and the sequence page show what each group got."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.sending import send_delivery
from engine.http.api import create_api
from engine.models import Delivery, DeliveryStatus, Enrolment
from engine.runner.inline import run_due
from tests.apps import outbox_app
from tests.engine.read.test_experiment_reports import EMAIL_STEP, SMS_STEP, write_workflows

KEY = "experiments-key-0123456789abcdef-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
LEADS = 30


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    """The test workflows plus `trial`: two welcome variants, two SMS variants, a 10% holdout;
    thirty leads filled in the form and what was due went out."""
    app = outbox_app(db, clock, tmp_path, write_workflows(tmp_path / "workflows"))
    client = TestClient(create_api(app, None, api_keys=[KEY], environ={}), headers=AUTH)
    for n in range(LEADS):
        body = {"lead": {"email": f"lead{n}@x.test"}, "type": "form_submitted"}
        assert client.post("/v1/events", json=body).status_code == 200
    run_due(app.sessions, app.rt)
    with app.sessions() as s:
        planned = list(s.scalars(select(Delivery.id).where(Delivery.status == "planned")))
    for delivery_id in planned:
        send_delivery(app, delivery_id)
    clock.advance(timedelta(days=4))  # the welcome's 3-day window has closed
    return app


@pytest.fixture
def client(nurture: App) -> TestClient:
    return TestClient(create_api(nurture, None, api_keys=[KEY], environ={}), headers=AUTH)


def _counts(app: App) -> tuple[int, int, dict[str, int]]:
    """Held-out and sent enrolments of trial, and sent welcome emails per variant."""
    with app.sessions() as s:
        held = s.scalar(
            select(func.count()).where(Enrolment.sequence == "trial", Enrolment.holdout)
        )
        sent = s.scalar(
            select(func.count()).where(Enrolment.sequence == "trial", ~Enrolment.holdout)
        )
        rows = s.execute(
            select(Delivery.variant, func.count())
            .where(Delivery.step == EMAIL_STEP, Delivery.status == DeliveryStatus.SENT)
            .group_by(Delivery.variant)
        ).all()
    return held or 0, sent or 0, {str(variant): n for variant, n in rows}


def test_the_overview_lists_each_step_with_the_sends_each_variant_made(
    client: TestClient, nurture: App
) -> None:
    response = client.get("/v1/experiments")
    assert response.status_code == 200
    data = response.json()
    email, sms = data["experiments"]
    assert (email["sequence"], email["step"], email["status"]) == ("trial", EMAIL_STEP, "running")
    assert (sms["step"], sms["metric"], sms["after"]) == (SMS_STEP, "replied", None)
    _, sent, per_variant = _counts(nurture)
    sends = {v["id"]: v["sends"] for v in email["variants"]}
    assert sends == {
        "welcome": per_variant.get("welcome", 0),
        "case_study": per_variant.get("case_study", 0),
    }
    assert sum(sends.values()) == sent  # every lead sent to got one variant; held-out ones none
    assert all(v["matured"] == v["sends"] and v["successes"] == 0 for v in email["variants"])
    assert data["holdouts"] == [{"sequence": "trial", "share": 0.1}]


def test_the_sequence_report_compares_sent_and_held_out_leads(
    client: TestClient, nurture: App
) -> None:
    response = client.get("/v1/experiments/trial")
    assert response.status_code == 200
    data = response.json()
    held, sent, _ = _counts(nurture)
    assert held > 0 and sent > 0  # a 10% holdout of 30 leads holds some out
    report = data["holdout"]
    assert (report["sent"]["leads"], report["held_out"]["leads"]) == (sent, held)
    assert report["sent"]["mql"] == {"eligible": sent, "converted": 0, "rate": 0.0}
    assert report["mql_lift"] == {"lift": None, "low": None, "high": None, "p_value": 1.0}
    assert [e["step"] for e in data["experiments"]] == [EMAIL_STEP, SMS_STEP]


def test_an_unknown_sequence_is_a_404_that_names_it(client: TestClient) -> None:
    response = client.get("/v1/experiments/nope")
    assert response.status_code == 404
    assert "unknown sequence 'nope'" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/experiments", "/v1/experiments/trial"])
def test_the_experiments_need_an_api_key(nurture: App, path: str) -> None:
    api = create_api(nurture, None, api_keys=[KEY], environ={})
    assert TestClient(api).get(path).status_code == 401
    wrong = {"Authorization": "Bearer " + "x" * 40}
    assert TestClient(api, headers=wrong).get(path).status_code == 401


def test_the_sequence_page_shows_the_variants_and_the_holdout_lift(nurture: App) -> None:
    api = create_api(nurture, None, api_keys=[], allow_no_auth=True, environ={})
    page = TestClient(api).get("/sequences/trial")
    assert page.status_code == 200
    text = page.text
    assert 'id="experiments"' in text
    assert f'data-step="awareness/{EMAIL_STEP}" data-status="running"' in text
    assert 'data-variant="welcome"' in text and 'data-variant="case_study"' in text
    assert 'data-lift="sql"' in text and "no held-out lead reached it" in text
    drip = TestClient(api).get("/sequences/drip")
    assert drip.status_code == 200 and 'id="experiments"' not in drip.text
