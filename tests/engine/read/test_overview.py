"""The dashboard's overview: each figure over a period of whole UTC days, and the period parser."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from engine.db import is_postgres
from engine.models import (
    Delivery,
    DeliveryStatus,
    Enrolment,
    Event,
    EventStatus,
    Handoff,
    HandoffStatus,
    Lead,
    Stage,
)
from engine.read.overview import Period, overview

WEEK = Period(date(2026, 3, 2), date(2026, 3, 8))  # Monday to Sunday
NOW = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)


def at(day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """A UTC moment in March 2026."""
    return datetime(2026, 3, day, hour, minute, second, tzinfo=UTC)


def _lead(s: Session, email: str, stage: Stage, **columns: Any) -> Lead:
    lead = Lead(email=email, stage=stage, created_at=at(1), updated_at=at(1), **columns)
    s.add(lead)
    s.flush()
    return lead


def _handoff(s: Session, lead: Lead, crossing: int, created: datetime, **columns: Any) -> None:
    s.add(
        Handoff(
            lead_id=lead.id,
            crossing=crossing,
            created_at=created,
            score={"total": 50 + crossing, "fit": 10, "engagement": 40 + crossing},
            reasons={},
            **columns,
        )
    )


def _deliveries(
    s: Session, lead: Lead, rows: list[tuple[str, DeliveryStatus, datetime, str | None]]
) -> None:
    enrolment = Enrolment(
        lead_id=lead.id,
        sequence="drip",
        sequence_version="v1",
        milestone="awareness",
        enrolled_at=at(1),
        milestone_entered_at=at(1),
        trigger="form_submitted",
    )
    s.add(enrolment)
    s.flush()
    for n, (channel, status, due, detail) in enumerate(rows):
        s.add(
            Delivery(
                id=f"d{n}",
                enrolment_id=enrolment.id,
                lead_id=lead.id,
                sequence="drip",
                milestone="awareness",
                step=f"s{n}",
                pass_no=1,
                channel=channel,
                template="welcome",
                status=status,
                planned_at=due,
                due_at=due,
                detail=detail,
            )
        )


def _events(s: Session, lead: Lead, rows: list[tuple[EventStatus, datetime]]) -> None:
    for status, received in rows:
        s.add(
            Event(
                lead_id=lead.id,
                type="page_viewed",
                occurred_at=received,
                received_at=received,
                status=status,
            )
        )


LOST = "unknown: timed out; not resent, a provider webhook settles it"
REFUSED = "permanent: 550 mailbox unavailable"


@pytest.fixture
def figures(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """Leads that became MQL or SQL on and around the week's edges, handoffs of different ages,
    deliveries inside and outside the week, and a backlog of events."""
    with sessions.begin() as s:
        ada = _lead(
            s,
            "ada@x.test",
            Stage.SQL,
            first_name="Ada",
            last_name="Lovelace",
            mql_at=at(2),  # the first instant of the week
            sql_at=at(8, 23, 59, 59),  # the last second of it
        )
        bo = _lead(s, "bo@x.test", Stage.MQL, first_name="Bo", mql_at=at(2, 23, 30))
        cy = _lead(s, "cy@x.test", Stage.MQL, mql_at=at(1, 23, 59, 59))  # the day before
        _lead(s, "di@x.test", Stage.MQL, mql_at=at(9))  # the day after
        _lead(s, "ed@x.test", Stage.SUBSCRIBER)
        _handoff(
            s,
            ada,
            1,
            at(9, 11),
            owner="sam",
            status=HandoffStatus.DELIVERED,
            delivered_at=at(9, 11, 1),
        )
        _handoff(s, bo, 1, at(3, 12, 1))  # 5 days 23h59m ago: pending
        _handoff(s, cy, 1, at(2, 11))  # 7 days 1h ago: out of the panel
        _deliveries(
            s,
            ada,
            [
                ("email", DeliveryStatus.SENT, at(2, 10), None),
                ("email", DeliveryStatus.SENT, at(5, 9), "deferred to ...: quiet hours"),
                ("email", DeliveryStatus.FAILED, at(4, 9), REFUSED),
                ("email", DeliveryStatus.FAILED, at(6, 9), REFUSED),
                ("sms", DeliveryStatus.UNKNOWN, at(7, 9), LOST),
                ("email", DeliveryStatus.SKIPPED, at(3, 9), "suppressed: ada@x.test"),
                ("email", DeliveryStatus.FAILED, at(1, 23), "permanent: before the week"),
                ("sms", DeliveryStatus.SENT, at(9), None),  # the day after
            ],
        )
        _events(
            s,
            bo,
            [
                (EventStatus.PENDING, at(9, 10)),
                (EventStatus.FAILED, at(7, 8)),
                (EventStatus.FAILED, at(5, 8)),
                (EventStatus.PROCESSED, at(1)),
                (EventStatus.PROCESSED, at(4)),
            ],
        )
    with sessions() as s:
        if is_postgres(s):  # the days are UTC days whatever the connection's zone says
            s.execute(text("SET TIME ZONE 'America/Los_Angeles'"))
        return overview(s, WEEK, NOW)


def test_the_overview_names_its_period_and_counts_leads_per_stage(figures: dict[str, Any]) -> None:
    assert figures["period"] == {"start": "2026-03-02", "end": "2026-03-08"}
    assert figures["stages"] == {
        "subscriber": 1,
        "lead": 0,
        "mql": 3,
        "sql": 1,
        "customer": 0,
        "recycled": 0,
        "mql_ever": 4,
        "sql_ever": 1,
    }


def test_mqls_and_sqls_are_counted_on_their_utc_day_with_every_day_of_the_period_listed(
    figures: dict[str, Any],
) -> None:
    assert figures["per_day"] == [
        {"day": "2026-03-02", "mql": 2, "sql": 0},
        {"day": "2026-03-03", "mql": 0, "sql": 0},
        {"day": "2026-03-04", "mql": 0, "sql": 0},
        {"day": "2026-03-05", "mql": 0, "sql": 0},
        {"day": "2026-03-06", "mql": 0, "sql": 0},
        {"day": "2026-03-07", "mql": 0, "sql": 0},
        {"day": "2026-03-08", "mql": 0, "sql": 1},
    ]


def test_handoffs_of_the_last_seven_days_are_listed_newest_first_and_counted_by_status(
    figures: dict[str, Any],
) -> None:
    assert figures["handoffs"] == [
        {
            "id": 1,
            "lead_id": 1,
            "email": "ada@x.test",
            "name": "Ada Lovelace",
            "owner": "sam",
            "status": "delivered",
            "created_at": "2026-03-09T11:00:00+00:00",
            "delivered_at": "2026-03-09T11:01:00+00:00",
            "score": 51,
        },
        {
            "id": 2,
            "lead_id": 2,
            "email": "bo@x.test",
            "name": "Bo",
            "owner": None,
            "status": "pending",
            "created_at": "2026-03-03T12:01:00+00:00",
            "delivered_at": None,
            "score": 51,
        },
    ]
    assert figures["handoff_counts"] == {"delivered": 1, "pending": 1, "withdrawn": 0}


def test_sends_due_in_the_period_are_counted_by_channel_and_status(
    figures: dict[str, Any],
) -> None:
    assert figures["sends"] == [
        {"channel": "email", "status": "failed", "count": 2},
        {"channel": "email", "status": "sent", "count": 2},
        {"channel": "email", "status": "skipped", "count": 1},
        {"channel": "sms", "status": "unknown", "count": 1},
    ]


def test_provider_errors_of_the_period_are_grouped_by_detail_most_frequent_first(
    figures: dict[str, Any],
) -> None:
    assert figures["provider_errors"] == [
        {"channel": "email", "detail": REFUSED, "count": 2, "last_at": "2026-03-06T09:00:00+00:00"},
        {"channel": "sms", "detail": LOST, "count": 1, "last_at": "2026-03-07T09:00:00+00:00"},
    ]


def test_the_event_backlog_counts_unprocessed_events_whenever_they_came(
    figures: dict[str, Any],
) -> None:
    assert figures["events"] == {
        "pending": 1,
        "failed": 2,
        "oldest_failed_at": "2026-03-05T08:00:00+00:00",
    }


def test_an_empty_database_gives_zeros_for_every_figure(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        figures = overview(s, WEEK, NOW)
    assert [d["mql"] + d["sql"] for d in figures["per_day"]] == [0] * 7
    assert figures["handoffs"] == []
    assert figures["handoff_counts"] == {"pending": 0, "delivered": 0, "withdrawn": 0}
    assert figures["sends"] == [] and figures["provider_errors"] == []
    assert figures["events"] == {"pending": 0, "failed": 0, "oldest_failed_at": None}


def test_the_handoff_list_stops_at_fifty_but_the_counts_take_every_handoff_of_the_week(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as s:
        lead = _lead(s, "many@x.test", Stage.SQL)
        for crossing in range(1, 56):
            _handoff(s, lead, crossing, NOW - timedelta(minutes=crossing))
    with sessions() as s:
        figures = overview(s, WEEK, NOW)
    assert [h["score"] for h in figures["handoffs"]] == [50 + n for n in range(1, 51)]
    assert figures["handoff_counts"] == {"pending": 55, "delivered": 0, "withdrawn": 0}


TODAY = date(2026, 3, 31)


@pytest.mark.parametrize("blank", [None, "", "  "])
def test_no_dates_mean_the_last_thirty_days_ending_today(blank: str | None) -> None:
    period = Period.parse(blank, blank, TODAY)
    assert period == Period(date(2026, 3, 2), TODAY)
    assert len(period.days()) == 30
    assert (period.days()[0], period.days()[-1]) == (period.start, period.end)
    assert Period.parse(None, None, TODAY, default_days=7).start == date(2026, 3, 25)


def test_one_given_end_fills_in_the_other() -> None:
    assert Period.parse("2026-03-20", None, TODAY) == Period(date(2026, 3, 20), TODAY)
    assert Period.parse(None, "2026-02-28", TODAY) == Period(date(2026, 1, 30), date(2026, 2, 28))
    assert Period.parse("2026-03-04", "2026-03-04", TODAY).days() == [date(2026, 3, 4)]


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2026-02-30", None, "start: not a date (YYYY-MM-DD): '2026-02-30'"),
        ("yesterday", None, "start: not a date (YYYY-MM-DD): 'yesterday'"),
        ("20260302", None, "start: not a date (YYYY-MM-DD): '20260302'"),
        (None, "03/02/2026", "end: not a date (YYYY-MM-DD): '03/02/2026'"),
        ("2026-03-10", "2026-03-09", "end: 2026-03-09 is before start 2026-03-10"),
        ("2026-04-02", None, "end: 2026-03-31 is before start 2026-04-02"),
        ("2025-03-30", "2026-03-31", "end: a period of at most 366 days, not 367"),
    ],
)
def test_a_bad_period_is_refused_with_a_message_naming_the_field(
    start: str | None, end: str | None, message: str
) -> None:
    with pytest.raises(ValueError) as refused:
        Period.parse(start, end, TODAY)
    assert str(refused.value) == message


def test_a_whole_leap_year_is_still_one_period() -> None:
    assert len(Period.parse("2027-03-01", "2028-02-29", TODAY).days()) == 366
