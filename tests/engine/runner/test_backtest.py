"""The backtest: a known history replayed through the shipped lead-nurture sequence gives the
figures computed by hand, the same as the live run that made it, and touches nothing live."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from channels.base import EMAIL, SMS, Channel, EmailMessage, SendResult, SmsMessage
from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.sending import suppress
from engine.errors import UnknownSequenceError
from engine.funnel.leads import Identity, get_lead
from engine.funnel.service import win_lead
from engine.models import Base
from engine.runner.backtest import BacktestReport, backtest
from engine.runner.simulation import ScriptedEvent, Simulation
from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday morning: the period's start
NOW = START + timedelta(days=30)
TEN = START + timedelta(hours=1)  # Monday 10:00 UTC, inside the send window
PERIOD = timedelta(days=30)
SETTINGS = Settings.from_env(
    {"NURTURE_WORKFLOWS": str(ROOT / "workflows"), "NURTURE_TEMPLATES": str(ROOT / "templates")}
)
PRICING = {"url": "https://acme.test/pricing"}


class Recording(Channel):
    """A live channel that must stay silent: it keeps whatever it is asked to send."""

    name = "recording"
    paced = False

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.messages: list[EmailMessage | SmsMessage] = []

    def send(self, message: EmailMessage | SmsMessage) -> SendResult:
        self.messages.append(message)
        return SendResult(self.name, message.delivery_id, "sent")


def _key(i: int) -> dict[str, Any]:
    return {"email": f"lead{i}@northwind.test"}


def known_history() -> list[ScriptedEvent]:
    """100 leads download a report on Monday 10:00 (8 points, enrolled in lead-nurture).
    Leads 0-39 download again on Tuesday 10:00 and view pricing at 11:00: 8 + 8 + 7 = 23,
    an MQL (20). Leads 40-49 unsubscribe on Tuesday 12:00. Leads 50-69 have a phone and
    SMS opt-in; the rest have no phone. Nobody opens or clicks."""
    events = []
    for i in range(100):
        lead = _key(i) | {"timezone": "UTC"}
        if 50 <= i < 70:
            lead |= {"phone": f"+1415555{i:04d}", "sms_consent": True}
        events.append(ScriptedEvent(TEN, lead, "content_downloaded", {"title": "Report"}))
        if i < 40:
            tuesday = TEN + timedelta(days=1)
            events.append(ScriptedEvent(tuesday, _key(i), "content_downloaded", {"title": "Guide"}))
            events.append(
                ScriptedEvent(tuesday + timedelta(hours=1), _key(i), "page_viewed", PRICING)
            )
        elif i < 50:
            events.append(ScriptedEvent(TEN + timedelta(days=1, hours=2), _key(i), "unsubscribed"))
    return events


def live_app(
    db: Engine,
    tmp_path: Path,
    history: list[ScriptedEvent],
    start: datetime = START,
    meanwhile: tuple[datetime, Callable[[App], None]] | None = None,
) -> App:
    """The live database made by running `history` through the real pipeline (both shipped
    sequences) until NOW, `meanwhile` done at its moment; the App on it that a marketer
    would backtest from, at NOW, with channels that record anything asked of them."""
    sim = Simulation(SETTINGS, start, tmp_path / "live", engine=db)
    try:
        if meanwhile is not None:
            at, action = meanwhile
            sim.run([e for e in history if e.at <= at], at, resolution=timedelta(hours=1))
            action(sim.app)
            history = [e for e in history if e.at > at]
        sim.run(history, NOW, resolution=timedelta(hours=1))
    finally:
        sim.close()
    channels = {EMAIL: Recording(EMAIL), SMS: Recording(SMS)}
    return App.create(
        SETTINGS, clock=FrozenClock(NOW), environ={}, channels=channels, engine=db, paced=False
    )


def steps(figures: dict[str, Any], kind: str) -> dict[str, Any]:
    """One figure of every step that has it, by place."""
    return {step["step"]: step[kind] for step in figures["steps"] if step[kind]}


def entered(figures: dict[str, Any]) -> dict[str, int]:
    return {m["id"]: m["entered"] for m in figures["milestones"]}


def test_the_backtest_of_a_known_history_gives_the_mqls_and_sends_computed_by_hand(
    db: Engine, tmp_path: Path
) -> None:
    report = backtest(live_app(db, tmp_path, known_history()), "lead-nurture", PERIOD)

    figures = report.backtest
    assert (report.eligible, report.leads, report.events, report.history) == (100, 100, 190, 0)
    assert (figures["mql"], figures["sql"]) == (40, 0)
    assert figures["median_days_to_mql"] == 1.04  # Tuesday 11:00, 25 hours after creation
    assert entered(figures) == {"awareness": 100, "consideration": 40, "decision": 0}
    assert steps(figures, "sent") == {
        "awareness/email:welcome": 100,  # Monday 10:00
        "awareness/email:case_study": 50,  # Wednesday: not the MQLs (moved on), not the 10 gone
        "awareness/sms:quick_question": 20,  # Saturday's branch (no opens): those with a phone
        "consideration/email:pricing_guide": 40,  # at once on Tuesday 11:00
        "consideration/email:demo_invite#2": 40,  # no click: 2 + 2 days later, a Saturday
    }
    assert steps(figures, "skipped_because") == {
        "awareness/sms:quick_question": {"no phone number": 30}
    }
    assert steps(figures, "deferred") == {  # Saturday's sends wait for Monday 09:00
        "awareness/sms:quick_question": 20,
        "consideration/email:demo_invite#2": 40,
    }
    assert steps(figures, "weekdays")["awareness/email:welcome"] == {"Mon": 100}
    assert steps(figures, "hours")["consideration/email:demo_invite#2"] == {"9": 40}
    assert figures == report.live  # the sequence did not change: the live run did the same


def test_a_backtest_writes_nothing_to_the_live_database_and_calls_no_live_channel(
    db: Engine, tmp_path: Path
) -> None:
    app = live_app(db, tmp_path, known_history())

    def counts() -> dict[str, int]:
        with app.sessions() as s:
            return {
                t.name: int(s.scalar(select(func.count()).select_from(t)) or 0)
                for t in Base.metadata.sorted_tables
            }

    before = counts()
    report = backtest(app, "lead-nurture", PERIOD)

    assert sum(steps(report.backtest, "sent").values()) == 250
    assert counts() == before
    assert before["deliveries"] > 0 and before["events"] == 190
    assert all(not channel.messages for channel in app.channels.values())  # type: ignore[attr-defined]


def test_leads_start_the_period_with_the_score_and_consent_their_earlier_events_gave_them(
    db: Engine, tmp_path: Path
) -> None:
    before = START - timedelta(days=10)  # a Friday
    ana, ben = {"email": "ana@northwind.test"}, {"email": "ben@northwind.test"}
    history = [
        # Ana became an MQL before the period (8 + 8 + 7), then fills in a form in it
        ScriptedEvent(before, ana, "content_downloaded", {"title": "Report"}),
        ScriptedEvent(before + timedelta(hours=1), ana, "content_downloaded", {"title": "Guide"}),
        ScriptedEvent(before + timedelta(hours=2), ana, "page_viewed", PRICING),
        ScriptedEvent(TEN, ana, "form_submitted"),
        # Ben left every email before the period, and downloads again in it
        ScriptedEvent(before, ben, "content_downloaded", {"title": "Report"}),
        ScriptedEvent(before + timedelta(hours=1), ben, "unsubscribed"),
        ScriptedEvent(TEN, ben, "content_downloaded", {"title": "Guide"}),
    ]
    report = backtest(live_app(db, tmp_path, history, start=before), "lead-nurture", PERIOD)

    figures = report.backtest
    assert (report.events, report.history) == (2, 5)
    assert figures["mql"] == 0  # Ana was one already
    assert entered(figures)["consideration"] == 1  # at 23 points she skips awareness's drip
    assert steps(figures, "sent") == {
        "consideration/email:pricing_guide": 1,
        "consideration/email:demo_invite#2": 1,
    }
    assert figures["enrolled"] == 1  # not Ben: without consent on any channel, nobody enrols


def test_what_no_event_replays_happens_at_its_moment_a_sale_and_a_suppressed_address(
    db: Engine, tmp_path: Path
) -> None:
    tuesday = TEN + timedelta(days=1)

    def sales_and_bounce(app: App) -> None:
        with app.sessions.begin() as s:
            win_lead(s, app.rt, get_lead(s, Identity(email="lead60@northwind.test")).id)
            suppress(s, EMAIL, "lead61@northwind.test", "sendgrid bounced", app.rt.clock.now())

    app = live_app(db, tmp_path, known_history(), meanwhile=(tuesday, sales_and_bounce))
    report = backtest(app, "lead-nurture", PERIOD)

    figures = report.backtest
    assert steps(figures, "sent")["awareness/email:case_study"] == 48  # not 60 nor 61
    assert figures["exited"]["customer"] == 1
    assert steps(figures, "skipped_because")["awareness/email:case_study"] == {
        "suppressed address": 1
    }
    assert steps(figures, "sent") == steps(report.live, "sent")


def test_a_sample_is_the_same_leads_for_the_same_seed_and_the_live_figures_count_only_them(
    db: Engine, tmp_path: Path
) -> None:
    app = live_app(db, tmp_path, known_history())

    first: BacktestReport = backtest(app, "lead-nurture", PERIOD, leads=10, seed=3)
    again = backtest(app, "lead-nurture", PERIOD, leads=10, seed=3)

    assert (first.eligible, first.leads) == (100, 10)
    assert steps(first.backtest, "sent")["awareness/email:welcome"] == 10
    assert first.live == first.backtest
    assert again.as_dict() == first.as_dict()


def test_an_unknown_sequence_is_refused_with_the_names_of_those_there_are(
    db: Engine, tmp_path: Path
) -> None:
    app = App.create(SETTINGS, clock=FrozenClock(NOW), environ={}, engine=db, paced=False)
    with pytest.raises(UnknownSequenceError, match="lead-nurture, re-engagement"):
        backtest(app, "lead-nurtur", PERIOD)
