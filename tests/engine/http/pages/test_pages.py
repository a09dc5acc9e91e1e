"""The dashboard's pages over HTTP on SQLite and PostgreSQL: sign-in, signed cookies, CSRF,
escaping, the lead page's reasons, sales actions and the handoffs export."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from engine.app import App
from engine.clock import FrozenClock
from engine.funnel.service import track, upsert_lead
from engine.http.api import create_api
from engine.http.pages.access import COOKIE
from engine.models import Consent, ConsentStatus, Handoff, Lead, Stage
from tests.apps import outbox_app

KEY = "dashboard-key-0123456789abcdef-0123456789"
SECRET = "dashboard-secret-0123456789abcdef-0123456789"
HOSTILE = "<script>alert(1)</script>"


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    return outbox_app(db, clock, tmp_path, NURTURE_SECRET_KEY=SECRET)


def _client(app: App, keys: list[str] | None = None) -> TestClient:
    keys = [KEY] if keys is None else keys
    api = create_api(app, None, api_keys=keys, allow_no_auth=not keys, environ={})
    return TestClient(api, follow_redirects=False)


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def _sign_in(client: TestClient) -> None:
    form = client.get("/login")
    answer = client.post("/login", data={"csrf": _csrf(form.text), "key": KEY, "next": "/"})
    assert answer.status_code == 303 and answer.headers["location"] == "/"


def _hot_lead(app: App) -> int:
    """A lead named with markup that crossed SQL: it has a handoff and a recycle button."""
    with app.sessions.begin() as s:
        upsert_lead(
            s,
            app.rt,
            {
                "email": "vp@x.test",
                "first_name": HOSTILE,
                "company": "=cmd|' /C calc'!A0",
                "title": "VP Marketing",
            },
        )
    for kind in ("demo_requested", "form_submitted", "content_downloaded"):
        with app.sessions.begin() as s:
            track(s, app.rt, {"email": "vp@x.test"}, kind)
    with app.sessions() as s:
        lead = s.scalars(select(Lead).where(Lead.email == "vp@x.test")).one()
        assert lead.stage == Stage.SQL, "the fixture lead should have crossed SQL"
        return lead.id


def test_with_keys_every_page_asks_to_sign_in_first(nurture: App) -> None:
    client = _client(nurture)
    for path in ("/", "/leads", "/leads/1", "/handoffs", "/handoffs.csv"):
        answer = client.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next=")
    assert client.get("/login").status_code == 200


def test_a_wrong_key_is_refused_and_a_right_one_signs_in(nurture: App) -> None:
    client = _client(nurture)
    form = client.get("/login")
    wrong = client.post("/login", data={"csrf": _csrf(form.text), "key": "nope", "next": "/"})
    assert wrong.status_code == 401 and "not one of NURTURE_API_KEYS" in wrong.text
    _sign_in(client)
    assert client.get("/").status_code == 200


def test_the_session_cookie_is_httponly_strict_and_a_forged_one_is_refused(
    nurture: App, db: Engine, clock: FrozenClock, tmp_path: Path
) -> None:
    client = _client(nurture)
    form = client.get("/login")
    answer = client.post("/login", data={"csrf": _csrf(form.text), "key": KEY})
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    payload, stamp, signature = client.cookies[COOKIE].split(".")
    forged = TestClient(client.app, follow_redirects=False)
    forged.cookies.set(COOKIE, f"{payload}.{stamp}.{signature[:-2]}xx")
    assert forged.get("/").status_code == 303
    # the same session signed with another secret (a guessed or development one)
    elsewhere = outbox_app(db, clock, tmp_path / "b", NURTURE_SECRET_KEY="another-" + SECRET)
    foreign = _client(elsewhere)
    _sign_in(foreign)
    replayed = TestClient(client.app, follow_redirects=False)
    replayed.cookies.set(COOKIE, foreign.cookies[COOKIE])
    assert replayed.get("/handoffs").status_code == 303


def test_a_session_of_a_key_rotated_out_is_signed_out(nurture: App) -> None:
    client = _client(nurture)
    _sign_in(client)
    rotated = _client(nurture, ["another-key-0123456789abcdef-0123456789"])
    rotated.cookies.set(COOKIE, client.cookies[COOKIE])
    assert rotated.get("/").status_code == 303


def test_a_post_without_the_sessions_csrf_token_changes_nothing(nurture: App) -> None:
    lead_id = _hot_lead(nurture)
    client = _client(nurture)
    _sign_in(client)
    assert client.post(f"/leads/{lead_id}/won", data={}).status_code == 403
    assert client.post(f"/leads/{lead_id}/won", data={"csrf": "guess"}).status_code == 403
    with nurture.sessions() as s:
        assert s.get(Lead, lead_id).stage == Stage.SQL  # type: ignore[union-attr]


def test_recycle_from_the_lead_page_changes_the_stage(nurture: App) -> None:
    lead_id = _hot_lead(nurture)
    client = _client(nurture)
    _sign_in(client)
    page = client.get(f"/leads/{lead_id}")
    answer = client.post(
        f"/leads/{lead_id}/recycle", data={"csrf": _csrf(page.text), "reason": "not now"}
    )
    assert answer.status_code == 303 and answer.headers["location"] == f"/leads/{lead_id}"
    with nurture.sessions() as s:
        assert s.get(Lead, lead_id).stage == Stage.RECYCLED  # type: ignore[union-attr]
    again = client.get(f"/leads/{lead_id}")
    assert 'id="lead-stage">recycled<' in again.text


def test_the_lead_page_shows_the_proof_of_each_consent(nurture: App, clock: FrozenClock) -> None:
    lead_id = _hot_lead(nurture)
    with nurture.sessions.begin() as s:
        s.add(
            Consent(
                lead_id=lead_id,
                channel="email",
                topic="newsletter",
                form="newsletter",
                text=f"Yes, email me {HOSTILE}",
                status=ConsentStatus.CONFIRMED,
                ip="203.0.113.9",
                requested_at=clock.now(),
                confirmed_at=clock.now(),
            )
        )
    client = _client(nurture)
    _sign_in(client)
    page = client.get(f"/leads/{lead_id}").text
    consents = page.split('id="consents"', 1)[1].split("</ul>", 1)[0]
    assert "newsletter on form newsletter: confirmed" in consents
    assert "from 203.0.113.9" in consents and "&lt;script&gt;" in consents
    assert HOSTILE not in consents


def test_a_lead_named_with_markup_shows_as_text(nurture: App) -> None:
    lead_id = _hot_lead(nurture)
    client = _client(nurture, [])
    for path in (f"/leads/{lead_id}", "/leads?q=x.test", "/handoffs", "/"):
        html = client.get(path).text
        assert HOSTILE not in html, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get(f"/leads/{lead_id}").text


def test_without_keys_the_pages_are_open_but_posts_still_need_the_token(nurture: App) -> None:
    lead_id = _hot_lead(nurture)
    client = _client(nurture, [])
    page = client.get(f"/leads/{lead_id}")
    assert page.status_code == 200
    assert client.post(f"/leads/{lead_id}/won", data={}).status_code == 403
    answer = client.post(f"/leads/{lead_id}/won", data={"csrf": _csrf(page.text)})
    assert answer.status_code == 303
    with nurture.sessions() as s:
        assert s.get(Lead, lead_id).stage == Stage.CUSTOMER  # type: ignore[union-attr]


def test_the_lead_page_shows_the_trace_with_the_score_and_its_reasons(nurture: App) -> None:
    lead_id = _hot_lead(nurture)
    html = _client(nurture, []).get(f"/leads/{lead_id}").text
    assert 'id="trace"' in html
    assert "demo_requested" in html and "handoff" in html
    assert re.search(r'class="status score">score<', html), "ledger rows show in the trace"


def test_the_handoffs_export_is_the_filtered_list_with_formulas_neutralised(nurture: App) -> None:
    lead_id = _hot_lead(nurture)
    client = _client(nurture, [])
    rows = list(csv.DictReader(io.StringIO(client.get("/handoffs.csv").text)))
    assert [int(row["lead_id"]) for row in rows] == [lead_id]
    assert rows[0]["company"].startswith("'=")
    with nurture.sessions() as s:
        status = s.scalars(select(Handoff.status)).one()
    other = "delivered" if status == "pending" else "pending"
    assert list(csv.DictReader(io.StringIO(client.get(f"/handoffs.csv?status={other}").text))) == []
    bad = client.get("/handoffs?since=yesterday")
    assert bad.status_code == 400 and "since: not a date" in bad.text


def test_an_exact_key_in_the_search_goes_straight_to_the_lead(nurture: App) -> None:
    lead_id = _hot_lead(nurture)
    client = _client(nurture, [])
    answer = client.get("/leads?q=VP@X.test")
    assert answer.status_code == 303 and answer.headers["location"] == f"/leads/{lead_id}"
    assert client.get("/leads/999999").status_code == 404
    assert client.get(f"/leads/{2**40}").status_code == 404  # beyond any key, not a 500
    for path in ("/leads?page=", "/handoffs?page="):
        assert client.get(f"{path}{10**30}").status_code == 200, path


def test_the_overview_range_is_checked_and_the_stages_are_counted(nurture: App) -> None:
    _hot_lead(nurture)
    client = _client(nurture, [])
    html = client.get("/?start=2026-03-01&end=2026-03-31").text
    assert re.search(r'data-stage="sql" href="/leads\?stage=sql"><span class="figure">1<', html)
    bad = client.get("/?start=2026-04-01&end=2026-03-01")
    assert bad.status_code == 400 and 'role="alert"' in bad.text


def test_a_stage_count_on_the_overview_lists_the_leads_at_that_stage(nurture: App) -> None:
    lead_id = _hot_lead(nurture)
    client = _client(nurture, [])
    overview = client.get("/?start=2026-03-01&end=2026-03-31").text
    assert 'href="/leads?stage=sql"' in overview
    assert f'href="/leads/{lead_id}"' in client.get("/leads?stage=sql").text
    assert f'href="/leads/{lead_id}"' not in client.get("/leads?stage=customer").text
