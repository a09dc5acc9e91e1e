"""Lifecycle stages (subscriber, lead, MQL, SQL, customer, recycled) and the SQL handoff."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.funnel.facts import LeadFacts
from engine.funnel.scoring import breakdown, reset_engagement
from engine.models import OUT_OF_NURTURE, Event, Handoff, HandoffStatus, Lead, Stage, StageChange
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Fired, Scoring

RECENT_ACTIVITY = 10

# The worker that records a crossing delivers its handoff at once; the scheduler claims it
# only when that has not happened by then (a lost message), so the CRM is not posted twice.
HANDOFF_GRACE = timedelta(seconds=30)


class StageMove(StrEnum):
    """Where a score change moves a lead along the funnel."""

    SQL = "sql"
    MQL = "mql"
    SLIPPED = "slipped"  # an MQL back below the MQL threshold


@dataclass(frozen=True)
class StageOutcome:
    """What a stage evaluation changed: triggers to enrol on and the handoff, if any; `held`
    when the lead qualifies for SQL but its handoff was held back (a rescore without it)."""

    fired: tuple[Fired, ...] = ()
    handoff: Handoff | None = None
    move: StageMove | None = None
    held: bool = False


def set_stage(session: Session, lead: Lead, stage: Stage, reason: str, now: datetime) -> None:
    """Change the stage and keep the transition for the funnel."""
    if lead.stage == stage:
        return
    session.add(
        StageChange(
            lead_id=lead.id, from_stage=lead.stage, to_stage=stage, reason=reason, changed_at=now
        )
    )
    lead.stage = stage


def stage_move(
    scoring: Scoring, facts: LeadFacts, stage: Stage, *, sql: bool = True
) -> StageMove | None:
    """The move the thresholds call for at a lead's score (`sql=False`: the SQL one aside)."""
    if stage in OUT_OF_NURTURE:
        return None
    if sql and scoring.sql.evaluate(facts):
        return StageMove.SQL
    is_mql = scoring.mql.evaluate(facts)
    if is_mql and stage != Stage.MQL:
        return StageMove.MQL
    if not is_mql and stage == Stage.MQL:
        return StageMove.SLIPPED
    return None


def evaluate_stage(
    session: Session, rt: Runtime, lead: Lead, cause: str, *, handoff: bool = True
) -> StageOutcome:
    """Move the lead along the funnel after its score changed; hand it to sales on SQL.

    With `handoff` off, a lead that qualifies for SQL is only said to (`held`) and moves as
    far as MQL: a rescore does that, so sales is never flooded by accident.
    """
    now = rt.clock.now()
    scoring = rt.workflows.scoring
    facts = LeadFacts(session, lead, now)
    move = stage_move(scoring, facts, lead.stage)
    held = move is StageMove.SQL and not handoff
    if held:
        move = stage_move(scoring, facts, lead.stage, sql=False)
    if move is StageMove.SQL:
        made = hand_off(session, rt, lead, cause)
        return StageOutcome((Fired("stage", Stage.SQL),), made, move)
    if move is StageMove.MQL:
        set_stage(session, lead, Stage.MQL, f"{scoring.mql.text} ({cause})", now)
        lead.mql_at = now
        return StageOutcome((Fired("stage", Stage.MQL),), move=move, held=held)
    if move is StageMove.SLIPPED:
        set_stage(session, lead, Stage.LEAD, f"slipped below {scoring.mql.text} ({cause})", now)
        return StageOutcome((Fired("slipped_back", Stage.MQL),), move=move, held=held)
    return StageOutcome(held=held)


def hand_off(session: Session, rt: Runtime, lead: Lead, cause: str) -> Handoff:
    """Cross the SQL threshold: set the stage, create the one handoff of this crossing.

    The caller holds the lead's row lock, and (lead, crossing) is unique, so two processes
    handling the same lead can never create two handoffs for one crossing. Its enrolments end
    when the journey next sees the lead (`journey.on_lead_changed`), in the same transaction.
    """
    now = rt.clock.now()
    session.flush()  # the breakdown sums the ledger: every row of it, in the database
    if lead.stage != Stage.MQL:
        lead.mql_at = lead.mql_at or now
    set_stage(session, lead, Stage.SQL, f"{rt.workflows.scoring.sql.text} ({cause})", now)
    lead.sql_at = now
    lead.sql_crossings += 1
    handoff = Handoff(
        lead_id=lead.id,
        crossing=lead.sql_crossings,
        created_at=now,
        score=breakdown(session, lead),
        reasons={
            "threshold": rt.workflows.scoring.sql.text,
            "cause": cause,
            "recent_activity": recent_activity(session, lead),
        },
        owner=assign_owner(session, rt, lead),
        status=HandoffStatus.PENDING,
        attempts=0,
        next_attempt_at=now + HANDOFF_GRACE,
    )
    session.add(handoff)
    session.flush()
    return handoff


def assign_owner(session: Session, rt: Runtime, lead: Lead) -> str | None:
    """Keep an existing owner; else the first matching rule; else the next owner in rotation."""
    assignment = rt.assignment
    if lead.owner is None:
        facts = LeadFacts(session, lead, rt.clock.now())
        rule = next((r for r in assignment.rules if r.condition.evaluate(facts)), None)
        if rule is not None:
            lead.owner = rule.owner
        elif assignment.owners:
            handed = session.scalar(select(func.count()).select_from(Handoff)) or 0
            lead.owner = assignment.owners[handed % len(assignment.owners)]
    return lead.owner


def recent_activity(
    session: Session, lead: Lead, limit: int = RECENT_ACTIVITY
) -> list[dict[str, object]]:
    """The lead's latest events, newest first, as plain data for handoffs and templates."""
    events = session.scalars(
        select(Event)
        .where(Event.lead_id == lead.id)
        .order_by(Event.occurred_at.desc(), Event.id.desc())
        .limit(limit)
    )
    return [
        {"type": e.type, "occurred_at": e.occurred_at.isoformat(), "properties": e.properties}
        for e in events
    ]


def recycle(session: Session, rt: Runtime, lead: Lead, reason: str) -> StageOutcome:
    """Sales sends the lead back: engagement starts over and re-engagement may enrol it."""
    now = rt.clock.now()
    set_stage(session, lead, Stage.RECYCLED, reason, now)
    reset_engagement(session, lead, f"recycled by sales: {reason}", now)
    return StageOutcome(fired=(Fired("recycled"),))


def mark_customer(session: Session, rt: Runtime, lead: Lead, reason: str) -> None:
    """The lead bought: it leaves every sequence for good (the journey ends them)."""
    set_stage(session, lead, Stage.CUSTOMER, reason, rt.clock.now())
