"""Each sequence as the dashboard draws it: milestones and steps from its YAML, each figure
beside the milestone or step it counts, and the leads behind every figure, a page at a time.

One query per figure over the whole sequence, never one per lead; the lead lists walk an
index newest first and stop after a page, so they stay quick with many leads.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, exists, false, func, literal, null, select
from sqlalchemy.orm import Session, aliased

from engine.db import is_postgres
from engine.models import (
    Delivery,
    DeliveryStatus,
    Enrolment,
    EnrolmentStatus,
    Event,
    Lead,
    MilestoneVisit,
)
from engine.read.stats import EVERYTHING, FEEDBACK, Scope, sequence_funnel
from engine.workflow.durations import format_duration
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Milestone, Sequence
from engine.workflow.versions import outline

ROWS = 50  # leads per page of a list
TOP_REASONS = 5  # reasons shown beside a step; its list has them all
MILESTONE_FIGURES = ("entered", "now_in", "mql", "sql")
STEP_FIGURES = ("planned", "sent", "opened", "clicked", "skipped", "deferred", "failed")
NOT_SENDS = ("wait", "goto", "branch")  # outline kinds; every other kind is a channel
# A deferral reads "deferred to <slot> (<local day, time and zone>): <rule>"; its reasons group
# by the rule, so every slot of "quiet hours 21:00-08:00" counts as one reason.
RULE_MARK = "): "
DEFERRED = Delivery.status.in_(
    (DeliveryStatus.SENT, DeliveryStatus.PLANNED)
) & Delivery.detail.like("deferred%")


def sequence_list(session: Session, rt: Runtime) -> list[dict[str, Any]]:
    """Every loaded sequence by name: file, version, enrolments and leads that reached MQL, SQL."""
    reached = {row["sequence"]: row for row in _reached(session)}
    listed = []
    for name in sorted(rt.workflows.sequences):
        sequence = rt.workflows.sequences[name]
        figures = reached.get(name, {"enrolled": 0, "active": 0, "mql": 0, "sql": 0})
        listed.append(
            {
                "name": name,
                "file": sequence.file,
                "version": sequence.version,
                "description": sequence.description,
                "enrolled": figures["enrolled"],
                "active": figures["active"],
                "exited": figures["enrolled"] - figures["active"],
                "mql": figures["mql"],
                "sql": figures["sql"],
            }
        )
    return listed


def _reached(session: Session, name: str | None = None) -> list[dict[str, Any]]:
    """Per sequence (or just `name`): enrolments, active ones, and distinct leads ever MQL, SQL."""
    query = (
        select(
            Enrolment.sequence,
            func.count(),
            func.count(case((Enrolment.status == EnrolmentStatus.ACTIVE, 1))),
            func.count(case((Lead.mql_at.is_not(None), Lead.id)).distinct()),
            func.count(case((Lead.sql_at.is_not(None), Lead.id)).distinct()),
        )
        .join(Lead, Lead.id == Enrolment.lead_id)
        .group_by(Enrolment.sequence)
    )
    if name is not None:
        query = query.where(Enrolment.sequence == name)
    return [
        {"sequence": sequence, "enrolled": n, "active": active, "mql": mql, "sql": sql}
        for sequence, n, active, mql, sql in session.execute(query)
    ]


def sequence_view(session: Session, rt: Runtime, name: str) -> dict[str, Any]:
    """The sequence `name` drawn as data: its milestones in order, each with its figures and its
    steps as a tree, each send with its counts and top reasons; KeyError when none is loaded."""
    sequence = rt.workflows.sequences[name]
    funnel = sequence_funnel(session, rt, name)
    (reached,) = _reached(session, name) or [{"enrolled": 0, "active": 0, "mql": 0, "sql": 0}]
    onward = _onward(session, sequence)
    deferred, skipped = step_reasons(session, name)
    figures = {  # every step that made a delivery, drawn in this version or not
        step["step"]: _figures(step, deferred.get(step["step"]), skipped.get(step["step"]))
        for step in funnel["steps"]
    }
    drawn = outline(sequence)["milestones"]
    milestones = []
    for n, (milestone, shape, counts) in enumerate(
        zip(sequence.milestones, drawn, funnel["milestones"], strict=True)
    ):
        following = sequence.milestones[n + 1].id if n + 1 < len(sequence.milestones) else None
        mql, sql, converted = onward.get(milestone.id, (0, 0, 0))
        milestones.append(
            {
                "id": milestone.id,
                "enter_when": milestone.enter_when.text if milestone.enter_when else None,
                "when_done": _when_done(milestone),
                "entered": counts["entered"],
                "now_in": counts["now_in"],
                "mql": mql,
                "sql": sql,
                "next": following,
                "converted": converted if following else None,
                "conversion": converted / counts["entered"]
                if following and counts["entered"]
                else None,
                "steps": _annotated(shape["steps"], milestone.id, figures),
            }
        )
    drawn_places = {
        f"{m.id}/{step['id']}"
        for m, shape in zip(sequence.milestones, drawn, strict=True)
        for step in _sends(shape["steps"])
    }
    return {
        "name": name,
        "file": sequence.file,
        "version": sequence.version,
        "description": sequence.description,
        "enrolled": funnel["enrolled"],
        "active": funnel["active"],
        "exited": funnel["exited"],
        "mql": reached["mql"],
        "sql": reached["sql"],
        "milestones": milestones,
        # sends of earlier versions that pinned enrolments still made: counted, not drawn
        "earlier": [
            {"place": place, **figures[place]} for place in figures if place not in drawn_places
        ],
    }


def _figures(
    counted: dict[str, Any], deferred: Counter[str] | None, skipped: Counter[str] | None
) -> dict[str, Any]:
    """One send step's counts (stats' and the deferrals) and its most frequent reasons."""
    deferred, skipped = deferred or Counter(), skipped or Counter()
    figures = {kind: int(counted.get(kind, 0)) for kind in STEP_FIGURES if kind != "deferred"}
    return {
        "template": counted.get("template"),
        "channel": counted.get("channel"),
        "figures": figures | {"deferred": sum(deferred.values())},
        "reasons": {
            "skipped": [
                {"reason": reason, "count": n} for reason, n in skipped.most_common(TOP_REASONS)
            ],
            "deferred": [
                {"reason": reason, "count": n} for reason, n in deferred.most_common(TOP_REASONS)
            ],
        },
    }


def _annotated(
    steps: list[dict[str, Any]], milestone: str, figures: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The outline's steps with each send's place, counts and reasons; branches recursively."""
    drawn = []
    for step in steps:
        if step["kind"] == "branch":
            step = step | {
                "then": _annotated(step["then"], milestone, figures),
                "else": _annotated(step["else"], milestone, figures),
            }
        elif step["kind"] not in NOT_SENDS:
            place = f"{milestone}/{step['id']}"
            found = figures.get(place) or _figures({}, None, None)
            step = step | {"place": place, "figures": found["figures"], "reasons": found["reasons"]}
        drawn.append(step)
    return drawn


def _sends(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every send step of an outline's step list, inside branches too."""
    found = []
    for step in steps:
        if step["kind"] == "branch":
            found.extend(_sends(step["then"]) + _sends(step["else"]))
        elif step["kind"] not in NOT_SENDS:
            found.append(step)
    return found


def _when_done(milestone: Milestone) -> str:
    """What a milestone does once its steps ran out, as a marketer says it."""
    done = milestone.when_done
    if done.after is None:
        return "waits for a trigger" if done.goto is None else f"goes to {done.goto}"
    after = format_duration(done.after)
    if done.goto is None:
        return f"waits {after}"
    return f"after {after} {'exits' if done.goto == 'exit' else f'goes to {done.goto}'}"


def _onward(session: Session, sequence: Sequence) -> dict[str, tuple[int, int, int]]:
    """Per milestone: distinct leads of its enrolments that ever reached MQL and SQL, and how
    many of its enrolments also entered the milestone after it."""
    visit, later = aliased(MilestoneVisit), aliased(MilestoneVisit)
    pairs = {m.id: n.id for m, n in pairwise(sequence.milestones)}
    went_on = (
        and_(
            later.enrolment_id == visit.enrolment_id,
            later.milestone == case(pairs, value=visit.milestone, else_=None),
        )
        if pairs
        else false()
    )
    rows = session.execute(
        select(
            visit.milestone,
            func.count(case((Lead.mql_at.is_not(None), Lead.id)).distinct()),
            func.count(case((Lead.sql_at.is_not(None), Lead.id)).distinct()),
            func.count(later.enrolment_id.distinct()),
        )
        .join(Enrolment, Enrolment.id == visit.enrolment_id)
        .join(Lead, Lead.id == Enrolment.lead_id)
        .outerjoin(later, went_on)
        .where(Enrolment.sequence == sequence.name)
        .group_by(visit.milestone)
    )
    return {milestone: (mql, sql, converted) for milestone, mql, sql, converted in rows}


def _deferral_rule(session: Session) -> ColumnElement[str]:
    """The text after the first RULE_MARK of a deferral (all of it without one), in SQL, so
    the grouping happens in the database; `_reasons` cuts again at the last mark."""
    detail = func.coalesce(Delivery.detail, "")
    at = func.strpos(detail, RULE_MARK) if is_postgres(session) else func.instr(detail, RULE_MARK)
    return case((at > 0, func.substr(detail, at + len(RULE_MARK))), else_=detail)


def _skip_reason() -> ColumnElement[str]:
    """A skip's detail, with every suppressed address one reason rather than one per address."""
    return case(
        (Delivery.detail.like("suppressed: %"), literal("suppressed address")),
        else_=func.coalesce(Delivery.detail, "no reason given"),
    )


def step_reasons(
    session: Session, name: str, scope: Scope = EVERYTHING
) -> tuple[dict[str, Counter[str]], dict[str, Counter[str]]]:
    """Per step place of `name`: its deferred sends, then its skipped ones, by their reason;
    within a scope, of the deliveries planned in its period."""
    deferred = _reasons(session, name, DEFERRED, _deferral_rule(session), scope)
    skipped = _reasons(
        session, name, Delivery.status == DeliveryStatus.SKIPPED, _skip_reason(), scope
    )
    return deferred, skipped


def _reasons(
    session: Session,
    name: str,
    which: ColumnElement[bool],
    reason: ColumnElement[str],
    scope: Scope,
) -> dict[str, Counter[str]]:
    """Per step place of `name`, the deliveries matching `which` counted by their reason."""
    scoped = scope.where(session, Delivery.lead_id, Delivery.planned_at)
    rows = session.execute(
        select(Delivery.milestone, Delivery.step, reason, func.count())
        .where(Delivery.sequence == name, which, *scoped)
        .group_by(Delivery.milestone, Delivery.step, reason)
    )
    found: dict[str, Counter[str]] = {}
    for milestone, step, text, n in rows:
        found.setdefault(f"{milestone}/{step}", Counter())[str(text).rpartition(RULE_MARK)[2]] += n
    return found


def sequence_leads(
    session: Session, name: str, milestone: str, step: str, what: str, page: int
) -> tuple[list[dict[str, Any]], bool]:
    """The leads behind one figure of `sequence_view` (`what`: a milestone figure, or a step
    figure of `step`), newest first, ROWS a page, and whether another page follows.

    ValueError names what is missing or unknown.
    """
    if what not in MILESTONE_FIGURES + STEP_FIGURES:
        raise ValueError(f"what: one of {', '.join(MILESTONE_FIGURES + STEP_FIGURES)}")
    if not milestone:
        raise ValueError(f"milestone: name the milestone whose {what} to list")
    if what in STEP_FIGURES and not step:
        raise ValueError(f"step: {what} is counted per step, name one")
    query = (
        _milestone_leads(name, milestone, what)
        if what in MILESTONE_FIGURES
        else _step_leads(name, milestone, step, what)
    )
    offset = (max(page, 1) - 1) * ROWS
    rows = session.execute(query.offset(offset).limit(ROWS + 1)).all()
    return [_row(*row) for row in rows[:ROWS]], len(rows) > ROWS


def _milestone_leads(name: str, milestone: str, what: str) -> Select[Lead, Any, Any, Any]:
    """Enrolments that entered or are in `milestone`, or leads of those that reached MQL, SQL."""
    visited = (MilestoneVisit.enrolment_id == Enrolment.id) & (
        MilestoneVisit.milestone == milestone
    )
    if what == "entered":
        entered_at = select(func.min(MilestoneVisit.entered_at)).where(visited).scalar_subquery()
        return (
            select(Lead, entered_at, null(), null())
            .join(Enrolment, Enrolment.lead_id == Lead.id)
            .where(Enrolment.sequence == name, exists().where(visited))
            .order_by(Enrolment.id.desc())
        )
    if what == "now_in":
        return (
            select(Lead, Enrolment.milestone_entered_at, null(), null())
            .join(Enrolment, Enrolment.lead_id == Lead.id)
            .where(
                Enrolment.sequence == name,
                Enrolment.status == EnrolmentStatus.ACTIVE,
                Enrolment.milestone == milestone,
            )
            .order_by(Enrolment.id.desc())
        )
    reached_at = Lead.mql_at if what == "mql" else Lead.sql_at
    entrant = (
        select(Enrolment.id)
        .join(MilestoneVisit, MilestoneVisit.enrolment_id == Enrolment.id)
        .where(
            Enrolment.lead_id == Lead.id,
            Enrolment.sequence == name,
            MilestoneVisit.milestone == milestone,
        )
    )
    return (
        select(Lead, reached_at, null(), null())
        .where(reached_at.is_not(None), entrant.exists())
        .order_by(Lead.id.desc())
    )


def _step_leads(name: str, milestone: str, step: str, what: str) -> Select[Lead, Any, Any, Any]:
    """The deliveries of one step behind a figure, with their leads, latest due first."""
    query = (
        select(Lead, func.coalesce(Delivery.sent_at, Delivery.due_at), Delivery.detail, Delivery.id)
        .join(Lead, Lead.id == Delivery.lead_id)
        .where(Delivery.sequence == name, Delivery.milestone == milestone, Delivery.step == step)
        .order_by(Delivery.due_at.desc(), Delivery.id.desc())
    )
    if what == "deferred":
        return query.where(DEFERRED)
    if what in ("sent", "skipped", "failed"):
        return query.where(Delivery.status == DeliveryStatus(what))
    if what in ("opened", "clicked"):
        types = [kind for kind, counted in FEEDBACK.items() if counted == what]
        feedback = select(Event.id).where(
            Event.lead_id == Delivery.lead_id,  # the (lead, type) index, one probe per send
            Event.type.in_(types),
            Event.properties["delivery_id"].as_string() == Delivery.id,
        )
        return query.where(Delivery.status == DeliveryStatus.SENT, feedback.exists())
    return query  # planned: every delivery the step made, whatever became of it


def _row(lead: Lead, at: Any, detail: str | None, delivery_id: str | None) -> dict[str, Any]:
    """One lead of a list as the page shows it."""
    return {
        "lead_id": lead.id,
        "name": lead.full_name,
        "email": lead.email,
        "stage": str(lead.stage),
        "at": at.isoformat() if at is not None else None,
        "detail": detail,
        "delivery_id": delivery_id,
    }
