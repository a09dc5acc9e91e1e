"""A sequence's holdout: whether the leads it sent to reached MQL and SQL more often than the
leads it held out, with the lift's confidence interval."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.clock import as_utc
from engine.models import Enrolment, Lead, Stage, StageChange
from engine.read.significance import Lift, lift
from engine.read.variants import REACHED, chunks
from engine.workflow.spec import Metric
from engine.workflow.versions import load_version

__all__ = ["Arm", "Group", "HoldoutReport", "holdout_report", "percent"]

# Stages a lead must be in at enrolment to count as able to reach MQL, and SQL.
_BELOW = {
    Metric.MQL: (Stage.SUBSCRIBER, Stage.LEAD, Stage.RECYCLED),
    Metric.SQL: (Stage.SUBSCRIBER, Stage.LEAD, Stage.RECYCLED, Stage.MQL),
}
_DAY = 86400


@dataclass(frozen=True)
class Group:
    """Leads of one arm that could still reach a stage when enrolled, and those that did."""

    eligible: int
    converted: int
    rate: float | None  # converted / eligible; None with no eligible lead


@dataclass(frozen=True)
class Arm:
    """The leads whose first enrolment was sent to, or held out: how far they got after it."""

    leads: int
    mql: Group
    sql: Group
    median_days_to_sql: float | None  # from enrolment to the first SQL, among converted leads


@dataclass(frozen=True)
class HoldoutReport:
    """A sequence's sent leads beside its held-out leads, on reaching MQL and SQL."""

    sequence: str
    confidence: float
    sent: Arm
    held_out: Arm
    mql_lift: Lift | None  # None while either arm has no eligible lead
    sql_lift: Lift | None

    def sentence(self, stage: Metric) -> str:
        """The comparison on reaching MQL or SQL in a marketer's words, e.g. `3 of 6 sent leads
        reached SQL (50.0%) vs 1 of 5 held out (20.0%): lift +150% (95% CI ...), p = 0.52`."""
        ours, theirs, lifted = self.sent.mql, self.held_out.mql, self.mql_lift
        if stage == Metric.SQL:
            ours, theirs, lifted = self.sent.sql, self.held_out.sql, self.sql_lift
        name = stage.upper()
        if lifted is None:
            arm = "held-out" if ours.eligible else "sent"
            return f"no lift to measure yet: no {arm} lead could still reach {name}"
        said = (
            f"{ours.converted} of {ours.eligible} sent leads reached {name} ({percent(ours.rate)})"
            f" vs {theirs.converted} of {theirs.eligible} held out ({percent(theirs.rate)})"
        )
        if lifted.lift is None:
            change = "no lift figure yet: no held-out lead reached it"
        elif lifted.low is None:
            change = f"lift {lifted.lift:+.0%} (no interval while no sent lead reached it)"
        else:
            high = "no upper bound" if lifted.high is None else f"{lifted.high:+.0%}"
            change = (
                f"lift {lifted.lift:+.0%} ({lifted.confidence:.0%} CI {lifted.low:+.0%} to {high})"
            )
        return f"{said}: {change}, p = {lifted.p_value:.2g}"


@dataclass
class _Tally:
    """Counts of one arm as its leads are read."""

    leads: int = 0
    eligible: dict[Metric, int] = field(default_factory=lambda: defaultdict(int))
    converted: dict[Metric, int] = field(default_factory=lambda: defaultdict(int))
    days_to_sql: list[float] = field(default_factory=list)

    def add(self, enrolled_at: datetime, stage: Stage, later: list[tuple[datetime, Stage]]) -> None:
        """One lead: its stage at enrolment and its stage changes after it, oldest first."""
        self.leads += 1
        for metric in (Metric.MQL, Metric.SQL):
            if stage not in _BELOW[metric]:
                continue
            self.eligible[metric] += 1
            first = next((at for at, to in later if to in REACHED[metric]), None)
            if first is not None:
                self.converted[metric] += 1
                if metric == Metric.SQL:
                    self.days_to_sql.append((first - enrolled_at).total_seconds() / _DAY)

    def arm(self) -> Arm:
        """The arm's figures."""
        groups = {
            m: Group(
                self.eligible[m], self.converted[m], _share(self.converted[m], self.eligible[m])
            )
            for m in (Metric.MQL, Metric.SQL)
        }
        median = round(statistics.median(self.days_to_sql), 2) if self.days_to_sql else None
        return Arm(self.leads, groups[Metric.MQL], groups[Metric.SQL], median)


def holdout_report(
    session: Session, sequence_name: str, now: datetime, confidence: float = 0.95
) -> HoldoutReport:
    """Compare the leads a sequence sent to with those it held out, each lead counted once at
    its first enrolment, on whether it went on to reach MQL and SQL by `now`."""
    firsts = _first_enrolments(session, sequence_name, now)
    tallies = {False: _Tally(), True: _Tally()}
    for chunk in chunks(sorted(firsts)):
        changes = _stage_changes(session, chunk)
        stages = dict(session.execute(select(Lead.id, Lead.stage).where(Lead.id.in_(chunk))).all())
        for lead_id in chunk:
            enrolled_at, held = firsts[lead_id]
            history = changes.get(lead_id, [])
            before = [to for at, _, to in history if at <= enrolled_at]
            stage = before[-1] if before else history[0][1] if history else stages[lead_id]
            later = [(at, to) for at, _, to in history if enrolled_at < at <= now]
            tallies[held].add(enrolled_at, stage, later)
    sent, held_out = tallies[False].arm(), tallies[True].arm()
    return HoldoutReport(
        sequence_name,
        confidence,
        sent,
        held_out,
        _lift(sent.mql, held_out.mql, confidence),
        _lift(sent.sql, held_out.sql, confidence),
    )


def _first_enrolments(
    session: Session, sequence_name: str, now: datetime
) -> dict[int, tuple[datetime, bool]]:
    """Per lead, when its first enrolment in the sequence began and whether it was held out;
    only enrolments of versions that held leads out, so the sent leads are drawn from the same
    leads and months as the held-out ones (not from before the holdout existed)."""
    rows = session.execute(
        select(
            Enrolment.lead_id, Enrolment.enrolled_at, Enrolment.holdout, Enrolment.sequence_version
        )
        .where(Enrolment.sequence == sequence_name, Enrolment.enrolled_at <= now)
        .order_by(Enrolment.enrolled_at, Enrolment.id)
    )
    holding: dict[str, bool] = {}
    firsts: dict[int, tuple[datetime, bool]] = {}
    for lead_id, enrolled_at, held, version in rows:
        if version not in holding:
            holding[version] = _holds_out(session, sequence_name, version)
        if lead_id not in firsts and (held or holding[version]):
            firsts[lead_id] = (as_utc(enrolled_at), bool(held))
    return firsts


def _holds_out(session: Session, sequence_name: str, version: str) -> bool:
    """True when that version of the sequence had a holdout (or was never stored: unknown)."""
    stored = load_version(session, sequence_name, version)
    return stored is None or stored.holdout > 0


def _stage_changes(
    session: Session, lead_ids: list[int]
) -> dict[int, list[tuple[datetime, Stage, Stage]]]:
    """Every stage change of these leads as (when, from, to), oldest first."""
    rows = session.execute(
        select(
            StageChange.lead_id,
            StageChange.changed_at,
            StageChange.from_stage,
            StageChange.to_stage,
        )
        .where(StageChange.lead_id.in_(lead_ids))
        .order_by(StageChange.changed_at, StageChange.id)
    )
    changes: dict[int, list[tuple[datetime, Stage, Stage]]] = defaultdict(list)
    for lead_id, at, from_stage, to_stage in rows:
        changes[lead_id].append((as_utc(at), from_stage, to_stage))
    return changes


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def percent(rate: float | None) -> str:
    """A rate as people read it, one decimal; "-" when there is none yet."""
    return "-" if rate is None else f"{rate:.1%}"


def _lift(sent: Group, held: Group, confidence: float) -> Lift | None:
    return lift(sent.converted, sent.eligible, held.converted, held.eligible, confidence)
