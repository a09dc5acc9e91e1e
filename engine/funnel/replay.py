"""A lead's recorded past scored again under the scoring rules on disk, beside its ledger.

The replay runs the live scoring functions (`score_event`, `apply_decay`, `reset_engagement`,
`recompute_fit`) on a detached copy of the lead, in a session that never touches the
database, over the lead's processed events in time order and the moments sales reset it. So
a rescore gives exactly what the engine would have given had these rules been in place and
every event arrived on time: one implementation of the rules, not two.

A rescore corrects a rule's points with one row per rule, not the times the rule scored, and
limits count those times (`scoring._SCORED`): an event inside a changed rule's limit window
soon after a rescore is judged by the old count, until the next rescore settles it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from engine.clock import as_utc
from engine.funnel.memo import Memo, remembering
from engine.funnel.scoring import (
    apply_decay,
    recompute_fit,
    record_activity,
    reset_engagement,
    score_event,
)
from engine.models import Event, EventStatus, Lead, ScoreEntry, Stage, StageChange
from engine.workflow.spec import Scoring

# Points closer than this are equal: percent decay leaves float dust that is no change.
TOLERANCE = 1e-6

_EVENTS = (
    select(Event.lead_id, Event.id, Event.type, Event.properties, Event.occurred_at)
    .where(
        Event.lead_id.in_(bindparam("leads", expanding=True)),
        Event.status == EventStatus.PROCESSED,  # a pending or failed one is scored on its retry
    )
    .order_by(Event.lead_id, Event.occurred_at, Event.id)
)
# Sales recycling a lead resets its engagement; read from the stage changes, since a reset
# of an engagement already at zero leaves no ledger row but still zeroes what follows.
_RESETS = select(StageChange.lead_id, StageChange.changed_at, StageChange.reason).where(
    StageChange.lead_id.in_(bindparam("leads", expanding=True)),
    StageChange.to_stage == Stage.RECYCLED,
)
_LEDGER = (
    select(ScoreEntry.lead_id, ScoreEntry.rule, func.sum(ScoreEntry.points))
    .where(ScoreEntry.lead_id.in_(bindparam("leads", expanding=True)))
    .group_by(ScoreEntry.lead_id, ScoreEntry.rule)
)
# What a lead is, copied onto the detached lead the rules score (fit reads any of it).
_COPIED = tuple(
    c.key for c in Lead.__table__.columns if c.key not in ("fit", "engagement", "fit_rules")
)


@dataclass
class Past:
    """What a lead did (processed events, oldest first), when sales reset it, and its ledger
    summed per rule."""

    events: list[Event] = field(default_factory=list)
    resets: list[tuple[datetime, str]] = field(default_factory=list)
    ledger: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Replayed:
    """A lead's score under the rules on disk, and per rule the points its ledger lacks."""

    fit: float
    engagement: float
    fit_rules: dict[str, float]
    decay_due_at: datetime | None
    changes: dict[str, float]  # rule -> points to add so the ledger matches the replay

    @property
    def score(self) -> float:
        """Fit plus engagement, as `Lead.score`."""
        return self.fit + self.engagement


def read_past(session: Session, lead_ids: Collection[int]) -> dict[int, Past]:
    """The past of many leads in three statements: events, resets, ledger sums."""
    ids = sorted(lead_ids)
    pasts = {lead_id: Past() for lead_id in ids}
    for lead_id, event_id, kind, properties, occurred_at in session.execute(
        _EVENTS, {"leads": ids}
    ):
        pasts[lead_id].events.append(
            Event(id=event_id, type=kind, properties=properties, occurred_at=as_utc(occurred_at))
        )
    for lead_id, moment, reason in session.execute(_RESETS, {"leads": ids}):
        pasts[lead_id].resets.append((as_utc(moment), f"recycled by sales: {reason}"))
    for lead_id, rule, points in session.execute(_LEDGER, {"leads": ids}):
        pasts[lead_id].ledger[rule] = float(points or 0)
    return pasts


def replay(scoring: Scoring, lead: Lead, past: Past, now: datetime) -> Replayed:
    """Score the lead's past again under `scoring`, as of `now`, and compare with its ledger."""
    ghost = Lead(**{key: getattr(lead, key) for key in _COPIED})
    ghost.fit, ghost.engagement, ghost.fit_rules = 0.0, 0.0, {}
    ghost.last_activity_at = ghost.decay_due_at = ghost.inactive_due_at = None
    scratch = Session()  # bound to nothing: whatever the rules add is only collected here
    points: dict[str, float] = defaultdict(float)
    resets = sorted(past.resets)
    with remembering(scratch, Memo(now, {lead.id})), scratch.no_autoflush:
        for entry in recompute_fit(scratch, scoring, ghost, now):
            points[entry.rule] += entry.points
        for event in past.events:
            # a reset comes after the events of its own moment, as sales acts on what it saw
            while resets and resets[0][0] < event.occurred_at:
                _reset(scratch, scoring, ghost, *resets.pop(0), points)
            for entry in apply_decay(scratch, scoring, ghost, event.occurred_at):
                points[entry.rule] += entry.points
            for entry in score_event(scratch, scoring, ghost, event, event.occurred_at):
                points[entry.rule] += entry.points
            record_activity(ghost, scoring, event.occurred_at)
        for moment, reason in resets:
            _reset(scratch, scoring, ghost, moment, reason, points)
        for entry in apply_decay(scratch, scoring, ghost, now):
            points[entry.rule] += entry.points
    scratch.expunge_all()
    rules = set(points) | set(past.ledger)
    changes = {
        rule: points.get(rule, 0.0) - past.ledger.get(rule, 0.0)
        for rule in sorted(rules)
        if abs(points.get(rule, 0.0) - past.ledger.get(rule, 0.0)) > TOLERANCE
    }
    return Replayed(ghost.fit, ghost.engagement, dict(ghost.fit_rules), ghost.decay_due_at, changes)


def _reset(
    scratch: Session,
    scoring: Scoring,
    ghost: Lead,
    moment: datetime,
    reason: str,
    points: dict[str, float],
) -> None:
    """Sales recycled the lead at `moment`: decay due by then first, then engagement to zero."""
    for entry in apply_decay(scratch, scoring, ghost, moment):
        points[entry.rule] += entry.points
    reset = reset_engagement(scratch, ghost, reason, moment)
    if reset is not None:
        points[reset.rule] += reset.points
