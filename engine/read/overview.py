"""The dashboard's overview figures over a period of whole UTC days: one dict, JSON-ready."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from engine.db import is_postgres
from engine.models import (
    Delivery,
    DeliveryStatus,
    EventStatus,
    Handoff,
    HandoffStatus,
    Lead,
)
from engine.read.metrics import event_backlog
from engine.read.stats import stage_counts

MAX_DAYS = 366  # a year, leap day included: longer ranges make the per-day chart unreadable
HANDOFF_DAYS = 7  # the handoffs panel looks back this far from now
HANDOFF_ROWS = 50
PROVIDER_ERROR_ROWS = 10
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Period:
    """A range of whole UTC days, both ends included: what the overview's date selector picks."""

    start: date
    end: date

    @classmethod
    def parse(
        cls, start: str | None, end: str | None, today: date, default_days: int = 30
    ) -> Period:
        """The period a person typed; ValueError naming the field when it makes no sense.

        A missing end is today; a missing start is `default_days` days before the end, the end
        included (so no input at all is the last `default_days` days ending today).
        """
        last = _day("end", end) or today
        first = _day("start", start) or last - timedelta(days=default_days - 1)
        if last < first:
            raise ValueError(f"end: {last.isoformat()} is before start {first.isoformat()}")
        length = (last - first).days + 1
        if length > MAX_DAYS:
            raise ValueError(f"end: a period of at most {MAX_DAYS} days, not {length}")
        return cls(first, last)

    def days(self) -> list[date]:
        """Every day of the period in order, both ends included."""
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days + 1)]

    def bounds(self) -> tuple[datetime, datetime]:
        """The UTC instants the period covers: from the start's midnight to the day after end."""
        return (
            datetime.combine(self.start, time(), UTC),
            datetime.combine(self.end + timedelta(days=1), time(), UTC),
        )


def _day(field: str, value: str | None) -> date | None:
    """An ISO date (YYYY-MM-DD) or None when blank; ValueError naming the field otherwise."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        if not _ISO_DATE.fullmatch(text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError as error:
        raise ValueError(f"{field}: not a date (YYYY-MM-DD): {text!r}") from error


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def overview(session: Session, period: Period, now: datetime) -> dict[str, Any]:
    """Stage counts, MQLs and SQLs per day, recent handoffs, sends, event backlog and provider
    errors: what a marketer checks first, one query per figure."""
    handoffs, handoff_counts = _handoffs(session, now)
    return {
        "period": {"start": period.start.isoformat(), "end": period.end.isoformat()},
        "stages": stage_counts(session),
        "per_day": _per_day(session, period),
        "handoffs": handoffs,
        "handoff_counts": handoff_counts,
        "sends": _sends(session, period),
        "events": _events(session),
        "provider_errors": _provider_errors(session, period),
    }


def _utc_day(session: Session, column: InstrumentedAttribute[Any]) -> ColumnElement[str]:
    """The UTC day of a timestamp as YYYY-MM-DD text, in SQL on SQLite and PostgreSQL alike."""
    if is_postgres(session):  # timestamptz: the session's zone must not pick the day
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", column)  # SQLite stores naive UTC text


def _per_day(session: Session, period: Period) -> list[dict[str, Any]]:
    """Leads that became MQL and SQL on each day of the period, zeros included."""
    since, until = period.bounds()
    counted: dict[str, Counter[str]] = {}
    for name, column in (("mql", Lead.mql_at), ("sql", Lead.sql_at)):
        day = _utc_day(session, column)
        rows = session.execute(
            select(day, func.count()).where(column >= since, column < until).group_by(day)
        ).all()
        counted[name] = Counter({str(d): int(n) for d, n in rows})
    days = [d.isoformat() for d in period.days()]
    return [{"day": d, "mql": counted["mql"][d], "sql": counted["sql"][d]} for d in days]


def _handoffs(session: Session, now: datetime) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The handoffs of the last week, newest first (at most HANDOFF_ROWS), and all of them
    counted by status."""
    recent = (Handoff.created_at > now - timedelta(days=HANDOFF_DAYS), Handoff.created_at <= now)
    rows = session.execute(
        select(Handoff, Lead)
        .join(Lead, Lead.id == Handoff.lead_id)
        .where(*recent)
        .order_by(Handoff.created_at.desc(), Handoff.id.desc())
        .limit(HANDOFF_ROWS)
    ).all()
    listed = [
        {
            "id": h.id,
            "lead_id": lead.id,
            "email": lead.email,
            "name": lead.full_name,
            "owner": h.owner,
            "status": str(h.status),
            "created_at": _iso(h.created_at),
            "delivered_at": _iso(h.delivered_at),
            "score": (h.score or {}).get("total"),
        }
        for h, lead in rows
    ]
    counts = {status.value: 0 for status in HandoffStatus}
    for status, n in session.execute(
        select(Handoff.status, func.count()).where(*recent).group_by(Handoff.status)
    ):
        counts[status] = int(n)
    return listed, counts


def _in_period(period: Period) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """Deliveries due within the period."""
    since, until = period.bounds()
    return Delivery.due_at >= since, Delivery.due_at < until


def _sends(session: Session, period: Period) -> list[dict[str, Any]]:
    """Deliveries due in the period by channel and status."""
    rows = session.execute(
        select(Delivery.channel, Delivery.status, func.count())
        .where(*_in_period(period))
        .group_by(Delivery.channel, Delivery.status)
    ).all()
    return sorted(
        (
            {"channel": channel, "status": str(status), "count": int(n)}
            for channel, status, n in rows
        ),
        key=lambda row: (row["channel"], row["status"]),
    )


def _events(session: Session) -> dict[str, Any]:
    """The events not yet processed, whenever they came: the backlog a failing rule leaves."""
    by_status = event_backlog(session)
    failed, oldest_failed = by_status.get(EventStatus.FAILED, (0, None))
    return {
        "pending": by_status.get(EventStatus.PENDING, (0, None))[0],
        "failed": failed,
        "oldest_failed_at": _iso(oldest_failed),
    }


def _provider_errors(session: Session, period: Period) -> list[dict[str, Any]]:
    """Failed and unknown sends of the period by channel and detail, most frequent first."""
    count, last = func.count(), func.max(Delivery.due_at)
    rows = session.execute(
        select(Delivery.channel, Delivery.detail, count, last)
        .where(
            *_in_period(period),
            Delivery.status.in_((DeliveryStatus.FAILED, DeliveryStatus.UNKNOWN)),
        )
        .group_by(Delivery.channel, Delivery.detail)
        .order_by(count.desc(), last.desc(), Delivery.channel)
        .limit(PROVIDER_ERROR_ROWS)
    ).all()
    return [
        {"channel": channel, "detail": detail, "count": int(n), "last_at": _iso(at)}
        for channel, detail, n, at in rows
    ]
