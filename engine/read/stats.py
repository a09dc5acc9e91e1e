"""The funnel per sequence, milestone and step, and stage counts: `nurture stats`, `/v1/stats`."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

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


def sequence_funnel(session: Session, rt: Runtime, name: str) -> dict[str, Any]:
    """One sequence's enrolments, milestone entries and sends per step: its part of the funnel."""
    sequence = rt.workflows.sequences[name]
    enrolled = int(session.scalar(select(func.count()).where(Enrolment.sequence == name)) or 0)
    exits: dict[str | None, int] = _counts(
        session.execute(
            select(Enrolment.exit_reason, func.count())
            .where(Enrolment.sequence == name, Enrolment.status == EnrolmentStatus.EXITED)
            .group_by(Enrolment.exit_reason)
        ).all()
    )
    entered: dict[str, int] = _counts(
        session.execute(
            select(MilestoneVisit.milestone, func.count(func.distinct(MilestoneVisit.enrolment_id)))
            .join(Enrolment, Enrolment.id == MilestoneVisit.enrolment_id)
            .where(Enrolment.sequence == name)
            .group_by(MilestoneVisit.milestone)
        ).all()
    )
    now_in: dict[str, int] = _counts(
        session.execute(
            select(Enrolment.milestone, func.count())
            .where(Enrolment.sequence == name, Enrolment.status == EnrolmentStatus.ACTIVE)
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
        "steps": _steps(session, sequence),
    }


def _counts(rows: Any) -> dict[Any, int]:
    """(key, count) rows as a dict."""
    return {key: int(count) for key, count in rows}


def _steps(session: Session, sequence: Sequence) -> list[dict[str, Any]]:
    """Per step: planned and sent from deliveries; delivered, opened, clicked from feedback.

    Steps are named `<milestone>/<step id>` and listed in the order the sequence runs them.
    """
    name = sequence.name
    place = Delivery.milestone + "/" + Delivery.step
    rows = session.execute(
        select(place, Delivery.template, Delivery.channel, Delivery.status, func.count())
        .where(Delivery.sequence == name)
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
        )
        .group_by(place, Event.type)
    ).all()
    counted: dict[tuple[str, str], int] = defaultdict(int)
    for step, event_type, count in feedback:
        counted[(step, FEEDBACK[event_type])] += int(count)
    for (step, kind), count in counted.items():
        steps[step][kind] = count
    places = [
        f"{milestone.id}/{instruction.id}"
        for milestone in sequence.milestones
        for instruction in milestone.program
        if isinstance(instruction, Send)
    ]
    order = {place: n for n, place in enumerate(places)}
    return sorted(steps.values(), key=lambda s: (order.get(s["step"], len(order)), s["step"]))


def _median_days_to_sql(session: Session) -> float | None:
    rows = session.execute(
        select(Lead.created_at, Lead.sql_at).where(Lead.sql_at.is_not(None))
    ).all()
    days = [
        (sql_at - created).total_seconds() / 86400 for created, sql_at in rows if sql_at is not None
    ]
    return round(statistics.median(days), 2) if days else None
