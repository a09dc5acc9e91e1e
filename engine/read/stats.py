"""The funnel per sequence, milestone and step, and stage counts: `nurture stats`, `/v1/stats`."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    any_,
    func,
    literal,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import InstrumentedAttribute, Session

from engine.db import is_postgres
from engine.models import (
    Delivery,
    DeliveryStatus,
    Enrolment,
    EnrolmentStatus,
    Event,
    Lead,
    MilestoneVisit,
    Stage,
)
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Send, Sequence

# Provider feedback event types counted per step, by the delivery id they carry.
FEEDBACK = {
    "email_delivered": "delivered",
    "sms_delivered": "delivered",
    "email_opened": "opened",
    "email_clicked": "clicked",
    "bounced": "bounced",
}


@dataclass(frozen=True)
class Scope:
    """Which leads and which period a figure counts: every lead of all time by default; a
    backtest narrows both, to set the same leads over the same days side by side."""

    leads: Collection[int] | None = None
    since: datetime | None = None
    until: datetime | None = None

    def where(
        self,
        session: Session,
        lead: InstrumentedAttribute[int],
        at: InstrumentedAttribute[Any] | None = None,
    ) -> list[ColumnElement[bool]]:
        """The conditions that keep rows of the scope's leads whose `at` falls in its period
        (both ends included); none for the whole scope, so its queries stay as they were."""
        found = []
        if self.leads is not None:
            found.append(_among(session, lead, sorted(self.leads)))
        if at is not None and self.since is not None:
            found.append(at >= self.since)
        if at is not None and self.until is not None:
            found.append(at <= self.until)
        return found


EVERYTHING = Scope()


def _among(
    session: Session, column: InstrumentedAttribute[int], ids: list[int]
) -> ColumnElement[bool]:
    """`column` is one of `ids`, bound as one parameter however many there are (an array on
    PostgreSQL, JSON text unpacked by json_each on SQLite), so ten thousand ids cost no more
    than ten."""
    if is_postgres(session):
        return column == any_(literal(ids, ARRAY(Integer)))
    listed: Select[int] = select(literal_column("value", Integer)).select_from(
        func.json_each(literal(json.dumps(ids)))
    )
    return column.in_(listed)


def funnel(session: Session, rt: Runtime) -> dict[str, Any]:
    """Counts that tell a marketer how each sequence performs and how fast leads reach sales."""
    return {
        "stages": stage_counts(session),
        "sequences": {
            name: sequence_funnel(session, rt, name) for name in sorted(rt.workflows.sequences)
        },
        "median_days_to_sql": _median_days_to_sql(session),
    }


def stage_counts(session: Session) -> dict[str, int]:
    """Leads per stage now, and how many ever became MQL or SQL: the funnel's head figures."""
    rows = session.execute(select(Lead.stage, func.count()).group_by(Lead.stage)).all()
    counts = {stage.value: 0 for stage in Stage}
    counts.update({stage: int(n) for stage, n in rows})
    counts["mql_ever"] = int(
        session.scalar(select(func.count()).where(Lead.mql_at.is_not(None))) or 0
    )
    counts["sql_ever"] = int(
        session.scalar(select(func.count()).where(Lead.sql_at.is_not(None))) or 0
    )
    return counts


def sequence_funnel(
    session: Session, rt: Runtime, name: str, scope: Scope = EVERYTHING
) -> dict[str, Any]:
    """One sequence's enrolments, milestone entries and sends per step: its part of the funnel.

    Within a `scope`, enrolments, exits, entries and sends count when they happened in its
    period; `now_in` is where the scope's leads stand at the end.
    """
    sequence = rt.workflows.sequences[name]
    lead = Enrolment.lead_id
    enrolled = int(
        session.scalar(
            select(func.count()).where(
                Enrolment.sequence == name, *scope.where(session, lead, Enrolment.enrolled_at)
            )
        )
        or 0
    )
    exits: dict[str | None, int] = _counts(
        session.execute(
            select(Enrolment.exit_reason, func.count())
            .where(
                Enrolment.sequence == name,
                Enrolment.status == EnrolmentStatus.EXITED,
                *scope.where(session, lead, Enrolment.exited_at),
            )
            .group_by(Enrolment.exit_reason)
        ).all()
    )
    entered: dict[str, int] = _counts(
        session.execute(
            select(MilestoneVisit.milestone, func.count(func.distinct(MilestoneVisit.enrolment_id)))
            .join(Enrolment, Enrolment.id == MilestoneVisit.enrolment_id)
            .where(
                Enrolment.sequence == name, *scope.where(session, lead, MilestoneVisit.entered_at)
            )
            .group_by(MilestoneVisit.milestone)
        ).all()
    )
    now_in: dict[str, int] = _counts(
        session.execute(
            select(Enrolment.milestone, func.count())
            .where(
                Enrolment.sequence == name,
                Enrolment.status == EnrolmentStatus.ACTIVE,
                *scope.where(session, lead),
            )
            .group_by(Enrolment.milestone)
        ).all()
    )
    return {
        "enrolled": enrolled,
        "active": sum(int(n) for n in now_in.values()),
        "exited": {str(reason): int(n) for reason, n in exits.items()},
        "milestones": [
            {"id": m.id, "entered": int(entered.get(m.id, 0)), "now_in": int(now_in.get(m.id, 0))}
            for m in sequence.milestones
        ],
        "steps": _steps(session, sequence, scope),
    }


def _counts(rows: Any) -> dict[Any, int]:
    """(key, count) rows as a dict."""
    return {key: int(count) for key, count in rows}


def _steps(session: Session, sequence: Sequence, scope: Scope) -> list[dict[str, Any]]:
    """Per step: planned and sent from deliveries; delivered, opened, clicked from feedback.

    Steps are named `<milestone>/<step id>` and listed in the order the sequence runs them;
    within a scope, a delivery counts when it was planned in the period.
    """
    name = sequence.name
    place = Delivery.milestone + "/" + Delivery.step
    scoped = scope.where(session, Delivery.lead_id, Delivery.planned_at)
    rows = session.execute(
        select(place, Delivery.template, Delivery.channel, Delivery.status, func.count())
        .where(Delivery.sequence == name, *scoped)
        .group_by(place, Delivery.template, Delivery.channel, Delivery.status)
    ).all()
    steps: dict[str, dict[str, Any]] = {}
    for step, template, channel, status, count in rows:
        entry = steps.setdefault(
            step,
            {
                "step": step,
                "template": template,
                "channel": channel,
                "planned": 0,
                "sent": 0,
                "skipped": 0,
                "failed": 0,
                "delivered": 0,
                "opened": 0,
                "clicked": 0,
                "bounced": 0,
            },
        )
        entry["planned"] += int(count)
        if status in (DeliveryStatus.SENT, DeliveryStatus.SKIPPED, DeliveryStatus.FAILED):
            entry[status] += int(count)
    delivery_id = Event.properties["delivery_id"].as_string()
    feedback = session.execute(
        select(place, Event.type, func.count(func.distinct(Delivery.id)))
        .join(Delivery, Delivery.id == delivery_id)
        .where(
            Event.type.in_(FEEDBACK),
            Delivery.sequence == name,
            Delivery.status == DeliveryStatus.SENT,
            *scoped,
        )
        .group_by(place, Event.type)
    ).all()
    counted: dict[tuple[str, str], int] = defaultdict(int)
    for step, event_type, count in feedback:
        counted[(step, FEEDBACK[event_type])] += int(count)
    for (step, kind), count in counted.items():
        steps[step][kind] = count
    order = {place: n for n, place in enumerate(send_places(sequence))}
    return sorted(steps.values(), key=lambda s: (order.get(s["step"], len(order)), s["step"]))


def send_places(sequence: Sequence) -> list[str]:
    """Every send step of a sequence as `<milestone>/<step id>`, in the order it runs them."""
    return [
        f"{milestone.id}/{instruction.id}"
        for milestone in sequence.milestones
        for instruction in milestone.program
        if isinstance(instruction, Send)
    ]


def _median_days_to_sql(session: Session) -> float | None:
    return reached(session, Lead.sql_at)[1]


def reached(
    session: Session, stage_at: InstrumentedAttribute[datetime | None], scope: Scope = EVERYTHING
) -> tuple[int, float | None]:
    """How many of the scope's leads reached a stage (`Lead.mql_at`, `Lead.sql_at`) in its
    period, and the median days they took: from their creation, or from the period's start
    for a lead created before it."""
    rows = session.execute(
        select(Lead.created_at, stage_at).where(
            stage_at.is_not(None), *scope.where(session, Lead.id, stage_at)
        )
    ).all()
    days = [
        (at - max(scope.since or created, created)).total_seconds() / 86400
        for created, at in rows
        if at is not None
    ]
    return len(days), round(statistics.median(days), 2) if days else None
