"""The sequence pages over HTTP on SQLite and PostgreSQL: each sequence drawn from its YAML with
the figures of its milestones and steps, the reasons sends waited or were skipped, and the
leads behind every figure."""

from __future__ import annotations

import html
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from channels.base import EMAIL, DeliveryEvent
from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.feedback import record_delivery_event
from engine.delivery.sending import send_delivery
from engine.funnel.service import track
from engine.http.api import create_api
from engine.models import Delivery, DeliveryStatus, Lead
from engine.read import journeys
from engine.runner.inline import run_due
from tests.apps import FIXTURES, outbox_app

HOSTILE = "<script>alert(1)</script>"
QUIET = "quiet hours 21:00-08:00"
WINDOW = "send window Mon,Tue,Wed,Thu,Fri 09:00-18:00"
MOVED = "lead moved to milestone consideration"  # planned sends of a milestone left behind
WELCOME = "awareness/email:welcome"
PRICING = "consideration/email:pricing_guide"


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    """The test workflows with email quiet hours (21:00-08:00) and a weekday send window
    (09:00-18:00) on the drip, both in each lead's own time zone."""
    folder = tmp_path / "workflows"
    shutil.copytree(FIXTURES, folder)
    (folder / "sending.yml").write_text('quiet_hours: {email: "21:00-08:00"}\n')
    drip = (folder / "drip.yml").read_text()
    window = 'sms_from: "+15005550006", window: {days: mon-fri, hours: "09:00-18:00"}}'
    (folder / "drip.yml").write_text(drip.replace('sms_from: "+15005550006"}', window))
    return outbox_app(db, clock, tmp_path, folder)


def _client(app: App) -> TestClient:
    api = create_api(app, None, api_keys=[], allow_no_auth=True, environ={})
    return TestClient(api, follow_redirects=False)


def _send_due(app: App) -> None:
    """What the scheduler and a worker do: plan the due steps, send the due deliveries."""
    run_due(app.sessions, app.rt)
    with app.sessions() as s:
        planned = list(s.scalars(select(Delivery.id).where(Delivery.status == "planned")))
    for delivery_id in planned:
        send_delivery(app, delivery_id)


def _feedback(app: App, email: str, kind: str) -> None:
    """The provider reports `kind` (opened, clicked) on the welcome email sent to `email`."""
    with app.sessions.begin() as s:
        delivery_id, at = s.execute(
            select(Delivery.id, Delivery.sent_at)
            .join(Lead, Lead.id == Delivery.lead_id)
            .where(Lead.email == email, Delivery.template == "welcome")
        ).one()
        event = DeliveryEvent(
            kind=kind,
            channel=EMAIL,
            provider="sendgrid",
            provider_event_id=f"{email}:{kind}",
            occurred_at=at,
            delivery_id=delivery_id,
            provider_message_id=None,
            recipient=email,
        )
        record_delivery_event(s, app.rt, event)


@dataclass(frozen=True)
class Week:
    """Lead ids of the scenario, by first name."""

    ana: int
    ben: int
    cy: int
    dee: int
    eve: int
    fay: int


@pytest.fixture
def week(nurture: App, clock: FrozenClock) -> Week:
    """Monday 09:00 UTC, six leads fill in the form: Ana (UTC) gets the welcome at once, opens
    and clicks it; Ben (Los Angeles, 01:00) and Fay (Chicago, 03:00) wait out the quiet hours;
    Eve (Tokyo, 18:00) waits for the send window; Dee, a VP, is an MQL at once and asks for a
    demo (SQL); Cy (New York, 04:00) downloads twice and moves on to consideration before his
    welcome could go. At 17:00 UTC what is due goes out."""
    people = {
        "ana": {"email": "ana@x.test"},
        "ben": {"email": "ben@x.test", "timezone": "America/Los_Angeles", "first_name": HOSTILE},
        "cy": {"email": "cy@x.test", "timezone": "America/New_York", "first_name": "Cy"},
        "dee": {"email": "dee@x.test", "title": "VP Sales"},
        "eve": {"email": "eve@x.test", "timezone": "Asia/Tokyo"},
        "fay": {"email": "fay@x.test", "timezone": "America/Chicago"},
    }
    for person in people.values():
        with nurture.sessions.begin() as s:
            track(s, nurture.rt, person, "form_submitted")
    _send_due(nurture)
    with nurture.sessions.begin() as s:
        track(s, nurture.rt, people["dee"], "demo_requested")
    _feedback(nurture, "ana@x.test", "opened")
    _feedback(nurture, "ana@x.test", "clicked")
    for _ in range(2):
        with nurture.sessions.begin() as s:
            track(s, nurture.rt, people["cy"], "content_downloaded")
    _send_due(nurture)
    clock.set(datetime(2026, 3, 2, 17, 0, tzinfo=UTC))
    _send_due(nurture)
    with nurture.sessions() as s:
        ids = {email: lead_id for email, lead_id in s.execute(select(Lead.email, Lead.id))}
    return Week(**{name: ids[person["email"]] for name, person in people.items()})


def _count(page: str, what: str, place: str) -> tuple[int, str]:
    """The figure a count link shows and where it leads; `place` is a milestone or a step."""
    where = "data-step" if "/" in place else "data-milestone"
    found = re.search(
        rf'<a class="count[^"]*" data-count="{what}" [^>]*{where}="{re.escape(place)}"'
        r' href="([^"]+)"><span class="figure">([\d,]+)</span>',
        page,
    )
    assert found, f"no {what} count for {place}"
    return int(found.group(2).replace(",", "")), html.unescape(found.group(1))


def _listed(client: TestClient, href: str) -> list[int]:
    """The lead ids a list page shows, in order."""
    answer = client.get(href)
    assert answer.status_code == 200, answer.text
    return [int(n) for n in re.findall(r'<tr data-lead="(\d+)"', answer.text)]


def test_the_list_shows_every_sequence_with_its_enrolments_and_leads_that_reached_mql_and_sql(
    nurture: App, week: Week
) -> None:
    page = _client(nurture).get("/sequences").text
    drip = re.search(r'<tr data-sequence="drip">(.*?)</tr>', page, re.S)
    assert drip and 'href="/sequences/drip"' in drip.group(1)
    figures = dict(re.findall(r'data-figure="(\w+)">([\d,]+)<', drip.group(1)))
    assert figures == {"enrolled": "6", "active": "5", "exited": "1", "mql": "2", "sql": "1"}
    assert 'data-sequence="winback"' in page and 'aria-current="page">Sequences<' in page


def test_each_milestone_shows_who_entered_who_is_in_it_and_how_many_went_on(
    nurture: App, week: Week
) -> None:
    client = _client(nurture)
    page = client.get("/sequences/drip").text
    shown = {
        (what, milestone): _count(page, what, milestone)[0]
        for what in ("entered", "now_in", "mql", "sql")
        for milestone in ("awareness", "consideration")
    }
    assert shown == {
        ("entered", "awareness"): 6,
        ("now_in", "awareness"): 4,
        ("mql", "awareness"): 2,
        ("sql", "awareness"): 1,
        ("entered", "consideration"): 2,
        ("now_in", "consideration"): 1,
        ("mql", "consideration"): 2,
        ("sql", "consideration"): 1,
    }
    handover = re.search(r'data-from="awareness" data-to="consideration">(.*?)</div>', page, re.S)
    assert handover and '<strong class="conversion">33%</strong>' in handover.group(1)
    assert "(2 of 6)" in handover.group(1)
    assert "entered when <code>score &gt;= 20</code>" in page  # the YAML's condition, escaped
    assert _listed(client, _count(page, "now_in", "awareness")[1]) == [
        week.fay,
        week.eve,
        week.ben,
        week.ana,
    ]
    assert _listed(client, _count(page, "entered", "consideration")[1]) == [week.dee, week.cy]
    assert _listed(client, _count(page, "mql", "awareness")[1]) == [week.dee, week.cy]
    assert _listed(client, _count(page, "sql", "awareness")[1]) == [week.dee]


def test_each_send_step_shows_its_counts_and_the_leads_behind_each(
    nurture: App, week: Week
) -> None:
    client = _client(nurture)
    page = client.get("/sequences/drip").text
    welcome = {what: _count(page, what, WELCOME) for what in journeys.STEP_FIGURES}
    assert {what: n for what, (n, _) in welcome.items()} == {
        "planned": 5,
        "sent": 3,
        "opened": 1,
        "clicked": 1,
        "skipped": 1,
        "deferred": 3,
        "failed": 0,
    }
    listed = {what: _listed(client, href) for what, (_, href) in welcome.items()}
    assert set(listed["planned"]) == {week.ana, week.ben, week.cy, week.eve, week.fay}
    assert set(listed["sent"]) == {week.ana, week.ben, week.fay}
    assert listed["opened"] == listed["clicked"] == [week.ana]
    assert listed["skipped"] == [week.cy]
    assert set(listed["deferred"]) == {week.ben, week.eve, week.fay}
    assert listed["failed"] == []
    assert listed["deferred"][0] == week.eve, "the latest due first: Eve waits until Tuesday"
    pricing = {what: _count(page, what, PRICING)[0] for what in ("planned", "sent", "deferred")}
    assert pricing == {"planned": 2, "sent": 2, "deferred": 1}
    case_study = _count(page, "planned", "awareness/email:case_study")
    assert case_study[0] == 0 and _listed(client, case_study[1]) == []


def test_deferrals_are_grouped_by_their_rule_and_skips_by_their_reason(
    nurture: App, week: Week
) -> None:
    client = _client(nurture)
    page = client.get("/sequences/drip").text
    step = re.search(rf'data-place="{WELCOME}">(.*?)<li class="step wait">', page, re.S)
    assert step, "the welcome step is drawn"
    reasons = [
        (kind, html.unescape(why), int(n))
        for kind, why, n in re.findall(
            r'data-reason="(\w+)">.*?class="why">(.*?)</span> <span class="times">× (\d+)<',
            step.group(1),
        )
    ]
    assert reasons == [
        ("deferred", QUIET, 2),  # Ben's and Fay's, each deferred to its own local 09:00
        ("deferred", WINDOW, 1),
        ("skipped", MOVED, 1),
    ]
    deferred = client.get(_count(page, "deferred", WELCOME)[1]).text
    assert "(Tue 09:00 Asia/Tokyo): " + WINDOW in deferred  # every detail in full on the list


def test_the_leads_behind_a_figure_come_a_page_at_a_time(
    nurture: App, week: Week, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journeys, "ROWS", 2)
    client = _client(nurture)
    href = "/sequences/drip/leads?milestone=awareness&step=&what=entered"
    first = client.get(href).text
    assert re.findall(r'<tr data-lead="(\d+)"', first) == [str(week.fay), str(week.eve)]
    older = re.search(r'<a href="([^"]+)">Older</a>', first)
    assert older and "Newer" not in first
    second = client.get(href.split("?")[0] + html.unescape(older.group(1))).text
    assert re.findall(r'<tr data-lead="(\d+)"', second) == [str(week.dee), str(week.cy)]
    assert "Newer</a>" in second and "Older</a>" in second
    with nurture.sessions() as s:
        rows, more = journeys.sequence_leads(s, "drip", "awareness", "", "entered", 3)
    assert [row["lead_id"] for row in rows] == [week.ben, week.ana] and not more


def test_a_lead_named_with_markup_shows_as_text_on_the_list(nurture: App, week: Week) -> None:
    client = _client(nurture)
    listed = client.get("/sequences/drip/leads?milestone=awareness&step=email%3Awelcome&what=sent")
    assert HOSTILE not in listed.text
    assert f'<a href="/leads/{week.ben}">&lt;script&gt;alert(1)&lt;/script&gt;</a>' in listed.text


def test_an_unknown_sequence_is_a_404_page_naming_it_as_text(nurture: App) -> None:
    client = _client(nurture)
    for path in ("/sequences/nope", "/sequences/nope/leads?milestone=a&what=entered"):
        answer = client.get(path)
        assert answer.status_code == 404 and "There is no sequence named “nope”" in answer.text
        assert 'data-sequence="drip"' in answer.text, "the 404 lists the sequences there are"
    hostile = client.get("/sequences/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    assert hostile.status_code == 404 and "<img src=x" not in hostile.text
    assert "“&lt;img src=x onerror=alert(1)&gt;”" in hostile.text


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("milestone=awareness&what=everyone", "what: one of entered, now_in, mql, sql, planned"),
        ("what=entered", "milestone: name the milestone whose entered to list"),
        ("milestone=awareness&what=sent", "step: sent is counted per step, name one"),
    ],
)
def test_a_list_of_a_figure_that_does_not_exist_is_refused_with_the_reason(
    nurture: App, query: str, problem: str
) -> None:
    answer = _client(nurture).get(f"/sequences/drip/leads?{query}")
    assert answer.status_code == 400 and problem in answer.text


def test_an_empty_sequence_draws_every_step_with_zeros(nurture: App) -> None:
    page = _client(nurture).get("/sequences/drip").text
    assert _count(page, "entered", "awareness")[0] == 0
    assert "nobody entered awareness yet" in page
    places = re.findall(r'data-place="([^"]+)"', page)
    assert places == [
        WELCOME,
        "awareness/email:case_study",
        "awareness/sms:quick_question",
        PRICING,
        "consideration/email:demo_invite",
        "consideration/sms:demo_nudge",
    ]
    assert re.search(
        r'class="lane then">.*?demo_invite.*?class="lane else">.*?demo_nudge', page, re.S
    )
    assert "wait 2d" in page and "when done, after 2w exits" in page


def test_with_keys_the_sequence_pages_ask_to_sign_in_first(nurture: App) -> None:
    api = create_api(nurture, None, api_keys=["k" * 40], environ={})
    client = TestClient(api, follow_redirects=False)
    for path in ("/sequences", "/sequences/drip", "/sequences/drip/leads?what=entered"):
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login")


def test_a_skipped_send_names_why_on_its_list(nurture: App, week: Week) -> None:
    with nurture.sessions() as s:
        rows, _ = journeys.sequence_leads(s, "drip", "awareness", "email:welcome", "skipped", 1)
        (delivery,) = s.scalars(select(Delivery).where(Delivery.status == DeliveryStatus.SKIPPED))
    assert rows == [
        {
            "lead_id": week.cy,
            "name": "Cy",
            "email": "cy@x.test",
            "stage": "mql",
            "at": delivery.due_at.isoformat(),
            "detail": MOVED,
            "delivery_id": delivery.id,
        }
    ]
