"""What each variant of a step achieved: its sends, and which of them met a metric in time.

One query for a step's sends, then one per 500 leads for what they did, never one per lead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from engine.clock import as_utc
from engine.models import Delivery, DeliveryStatus, Event, Stage, StageChange, VariantPick
from engine.workflow.spec import Metric, StepNames

__all__ = [
    "REACHED",
    "Place",
    "StepOutcomes",
    "chunks",
    "matured_sends",
    "pick_of",
    "picks",
    "step_outcomes",
]

Place = tuple[str, str, str]  # sequence, milestone, step id

# The events that make an email send a success, matched to it by its delivery id.
_FEEDBACK = {Metric.CLICKED: "email_clicked", Metric.OPENED: "email_opened"}
# Stages that count as reaching the metric's stage: a lead may go from lead straight to SQL.
REACHED = {Metric.MQL: (Stage.MQL, Stage.SQL), Metric.SQL: (Stage.SQL,)}
_CHUNK = 500


@dataclass
class StepOutcomes:
    """Per variant: the sends whose window has closed, in send order, True for a success;
    and how many more are sent but still inside their window."""

    matured: dict[str, list[bool]] = field(default_factory=lambda: defaultdict(list))
    pending: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def sends(self, variant: str) -> int:
        """Every send of the variant, matured or not."""
        return len(self.matured.get(variant, [])) + self.pending.get(variant, 0)


def picks(session: Session, *where: ColumnElement[bool]) -> dict[Place, VariantPick]:
    """The steps given a variant (by their winner rule or by hand), by place."""
    rows = session.scalars(select(VariantPick).where(*where))
    return {(p.sequence, p.milestone, p.step): p for p in rows}


def pick_of(
    picked: dict[Place, VariantPick], sequence: str, names: StepNames
) -> VariantPick | None:
    """The step's pick under any name it had."""
    found = (picked.get((sequence, m, s)) for m in names.milestones for s in names.steps)
    return next((p for p in found if p is not None), None)


def _sent(sequence: str, names: StepNames) -> list[ColumnElement[bool]]:
    """The sent deliveries of one step (by any name it had) that drew a variant."""
    return [
        Delivery.sequence == sequence,
        Delivery.milestone.in_(names.milestones),
        Delivery.step.in_(names.steps),
        Delivery.status == DeliveryStatus.SENT,
        Delivery.variant.is_not(None),
        Delivery.sent_at.is_not(None),
    ]


def matured_sends(
    session: Session, sequence: str, names: StepNames, within: timedelta, now: datetime
) -> dict[str, int]:
    """How many sends of each variant have had their window close: one aggregate, so a judge
    learns whether a look is due before it reads what the leads did."""
    rows = session.execute(
        select(Delivery.variant, func.count())
        .where(*_sent(sequence, names), Delivery.sent_at <= now - within)
        .group_by(Delivery.variant)
    )
    return {str(variant): int(count) for variant, count in rows}


def step_outcomes(
    session: Session,
    sequence: str,
    names: StepNames,
    metric: Metric,
    within: timedelta,
    now: datetime,
) -> StepOutcomes:
    """The sent deliveries of one step's variants and whether each met `metric` within
    `within` of its send; a send counts once its window has closed by `now`."""
    rows = session.execute(
        select(Delivery.id, Delivery.lead_id, Delivery.variant, Delivery.sent_at)
        .where(*_sent(sequence, names))
        .order_by(Delivery.sent_at, Delivery.id)
    ).all()
    outcomes = StepOutcomes()
    sends = [(d, lead, str(v), as_utc(at)) for d, lead, v, at in rows if at is not None]
    matured = [s for s in sends if s[3] + within <= now]
    for _, _, variant, sent_at in sends:
        if sent_at + within > now:
            outcomes.pending[variant] += 1
    hits = _successes(session, metric, within, matured)
    for delivery_id, _, variant, _ in matured:
        outcomes.matured[variant].append(delivery_id in hits)
    return outcomes


def _successes(
    session: Session,
    metric: Metric,
    within: timedelta,
    sends: list[tuple[str, int, str, datetime]],
) -> set[str]:
    """Ids of the sends that met the metric inside their window."""
    by_lead: dict[int, list[tuple[str, datetime]]] = defaultdict(list)
    for delivery_id, lead_id, _, sent_at in sends:
        by_lead[lead_id].append((delivery_id, sent_at))
    hits: set[str] = set()
    for chunk in chunks(sorted(by_lead)):
        for lead_id, moment, named in _moments(session, metric, chunk):
            for sent_id, sent_at in by_lead[lead_id]:
                ours = named == sent_id if metric in _FEEDBACK else True
                if ours and sent_at <= moment <= sent_at + within:
                    hits.add(sent_id)
    return hits


def _moments(
    session: Session, metric: Metric, lead_ids: list[int]
) -> Iterable[tuple[int, datetime, str | None]]:
    """(lead, when, delivery id named) of each thing that counts for the metric."""
    if metric in _FEEDBACK:
        rows = session.execute(
            select(Event.lead_id, Event.occurred_at, Event.properties).where(
                Event.lead_id.in_(lead_ids), Event.type == _FEEDBACK[metric]
            )
        )
        for lead_id, at, properties in rows:
            named = (properties or {}).get("delivery_id")
            yield lead_id, as_utc(at), str(named) if named else None
    elif metric == Metric.REPLIED:
        rows = session.execute(
            select(Event.lead_id, Event.occurred_at).where(
                Event.lead_id.in_(lead_ids), Event.type == "sms_replied"
            )
        )
        for lead_id, at in rows:
            yield lead_id, as_utc(at), None
    else:
        rows = session.execute(
            select(StageChange.lead_id, StageChange.changed_at).where(
                StageChange.lead_id.in_(lead_ids), StageChange.to_stage.in_(REACHED[metric])
            )
        )
        for lead_id, at in rows:
            yield lead_id, as_utc(at), None


def chunks(ids: list[int]) -> list[list[int]]:
    """Ids in lists short enough for one `IN (...)` on either database."""
    return [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]
