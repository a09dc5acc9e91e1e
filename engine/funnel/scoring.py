"""Fit and engagement scoring: every point a lead gains or loses is a ledger row with its reason."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from engine.funnel.memo import memo_of
from engine.models import Event, Lead, LedgerKind, ScoreEntry
from engine.workflow.spec import Decay, EngagementRule, Scoring


def _entry(
    lead: Lead,
    kind: str,
    rule: str,
    points: float,
    reason: str,
    occurred_at: datetime,
    now: datetime,
    event_id: int | None = None,
) -> ScoreEntry:
    return ScoreEntry(
        lead_id=lead.id,
        event_id=event_id,
        kind=kind,
        rule=rule,
        points=points,
        reason=reason,
        occurred_at=occurred_at,
        recorded_at=now,
    )


def score_event(
    session: Session, scoring: Scoring, lead: Lead, event: Event, now: datetime
) -> list[ScoreEntry]:
    """Apply every engagement rule that matches the event and is still under its limit."""
    entries = []
    memo = memo_of(session)
    for rule in scoring.engagement:
        if not rule.applies_to(event.type, event.properties or {}):
            continue
        times = memo.scored_times(lead.id, rule.id) if memo and rule.limit else None
        if times is not None:
            if _over(times, rule, event.occurred_at):
                continue
            times.append(event.occurred_at)
        elif _over_limit(session, lead, rule, event.occurred_at):
            continue
        entry = _entry(
            lead,
            LedgerKind.ENGAGEMENT,
            rule.id,
            rule.points,
            rule.reason,
            event.occurred_at,
            now,
            event.id,
        )
        lead.engagement += rule.points
        entries.append(entry)
    session.add_all(entries)
    return entries


# A limit counts the times its rule scored an event; rescore rows correct points, not times.
_SCORED = select(func.count()).where(
    ScoreEntry.lead_id == bindparam("lead"),
    ScoreEntry.rule == bindparam("rule"),
    ScoreEntry.kind == LedgerKind.ENGAGEMENT,
)
_SCORED_NEAR = _SCORED.where(
    ScoreEntry.occurred_at > bindparam("after"), ScoreEntry.occurred_at < bindparam("before")
)


def _over_limit(session: Session, lead: Lead, rule: EngagementRule, at: datetime) -> bool:
    """True when the rule already scored `count` times within `per` of `at` (either side).

    Looking both ways keeps limits exact when events arrive late and out of order.
    """
    if rule.limit is None:
        return False
    params: dict[str, object] = {"lead": lead.id, "rule": rule.id}
    if rule.limit.per is None:
        return (session.scalar(_SCORED, params) or 0) >= rule.limit.count
    params.update(after=at - rule.limit.per, before=at + rule.limit.per)
    return (session.scalar(_SCORED_NEAR, params) or 0) >= rule.limit.count


def _over(times: list[datetime], rule: EngagementRule, at: datetime) -> bool:
    """`_over_limit` on the remembered ledger times of the rule."""
    assert rule.limit is not None
    per = rule.limit.per
    near = len(times) if per is None else sum(1 for t in times if at - per < t < at + per)
    return near >= rule.limit.count


def recompute_fit(
    session: Session, scoring: Scoring, lead: Lead, now: datetime
) -> list[ScoreEntry]:
    """Re-run fit rules over the lead's attributes and ledger only the rules that changed."""
    current = fit_points(scoring, lead)
    before: dict[str, float] = dict(lead.fit_rules or {})
    entries = []
    for rule in scoring.fit:
        old, new = before.get(rule.id, 0), current.get(rule.id, 0)
        if old == new:
            continue
        reason = rule.reason if new else f"no longer: {rule.reason}"
        entries.append(_entry(lead, LedgerKind.FIT, rule.id, new - old, reason, now, now))
    for rule_id, old in before.items():  # rules removed from scoring.yml give their points back
        if rule_id not in {r.id for r in scoring.fit}:
            entries.append(
                _entry(lead, LedgerKind.FIT, rule_id, -old, "rule removed from scoring", now, now)
            )
    if entries:
        lead.fit = float(sum(current.values()))
        lead.fit_rules = current
        session.add_all(entries)
    return entries


def fit_points(scoring: Scoring, lead: Lead) -> dict[str, float]:
    """The points of each fit rule the lead's attributes pass now."""
    return {
        rule.id: rule.points
        for rule in scoring.fit
        if rule.match.test(lead.attribute(rule.attribute))
    }


def record_activity(lead: Lead, scoring: Scoring, occurred_at: datetime) -> None:
    """Move the lead's last activity forward and re-arm decay and inactivity from it."""
    if lead.last_activity_at is not None and occurred_at <= lead.last_activity_at:
        return
    lead.last_activity_at = occurred_at
    lead.decay_due_at = occurred_at + scoring.decay.after if scoring.decay else None
    lead.inactive_due_at = occurred_at + scoring.inactive_after if scoring.inactive_after else None


def apply_decay(session: Session, scoring: Scoring, lead: Lead, now: datetime) -> list[ScoreEntry]:
    """Take the decay steps that fell due by `now`, one ledger row each, never below zero."""
    steps, lead.decay_due_at = decay_steps(
        scoring.decay, lead.engagement, lead.decay_due_at, lead.last_activity_at, now
    )
    entries = []
    for due, loss, reason in steps:
        entries.append(_entry(lead, LedgerKind.DECAY, "decay", -loss, reason, due, now))
        lead.engagement -= loss
    session.add_all(entries)
    return entries


def decay_steps(
    decay: Decay | None,
    engagement: float,
    due: datetime | None,
    last_activity: datetime | None,
    now: datetime,
) -> tuple[list[tuple[datetime, float, str]], datetime | None]:
    """The decay steps due by `now` as (when, loss, reason), and when the next one falls due."""
    steps: list[tuple[datetime, float, str]] = []
    while decay and due is not None and due <= now:
        if engagement <= 0:
            return steps, None
        step = decay.points if decay.points is not None else engagement * (decay.percent or 0) / 100
        loss = min(float(step), engagement)
        steps.append((due, loss, f"inactive for {_days(due - (last_activity or due))} days"))
        engagement -= loss
        due = due + decay.every if engagement > 0 else None
    return steps, due


def _days(delta: timedelta) -> int:
    return int(delta.total_seconds() // 86400)


def reset_engagement(session: Session, lead: Lead, reason: str, now: datetime) -> ScoreEntry | None:
    """Zero the engagement half (sales recycled the lead) with a ledger row saying why."""
    if lead.engagement == 0:
        return None
    entry = _entry(lead, LedgerKind.RESET, "reset", -lead.engagement, reason, now, now)
    lead.engagement = 0.0
    lead.decay_due_at = None
    session.add(entry)
    return entry


def breakdown(session: Session, lead: Lead) -> dict[str, object]:
    """The score and the points each rule contributed: what a salesperson reads first."""
    rows = session.execute(
        select(ScoreEntry.kind, ScoreEntry.rule, func.sum(ScoreEntry.points), func.count())
        .where(ScoreEntry.lead_id == lead.id)
        .group_by(ScoreEntry.kind, ScoreEntry.rule)
    ).all()
    rules = [
        {"kind": kind, "rule": rule, "points": float(points), "times": int(times)}
        for kind, rule, points, times in sorted(rows, key=lambda row: -abs(float(row[2] or 0)))
        if points
    ]
    return {
        "total": lead.score,
        "fit": lead.fit,
        "engagement": lead.engagement,
        "rules": rules,
    }
