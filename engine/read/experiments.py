"""Every experiment at a glance: each step's variants with their results and decision, and
each sequence's holdout; the report of one sequence adds what its holdout shows it adds."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.clock import as_utc
from engine.errors import UnknownSequenceError
from engine.models import Enrolment, ExperimentStatus, PickKind, VariantPick
from engine.read.holdouts import HoldoutReport, holdout_report
from engine.read.significance import MAX_LOOKS
from engine.read.variants import Place, StepOutcomes, pick_of, picks, step_outcomes
from engine.workflow.durations import format_duration
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Metric, Send, Sequence, Variant

__all__ = [
    "Decision",
    "Experiment",
    "Holdout",
    "Overview",
    "SequenceExperiments",
    "VariantResult",
    "experiments_overview",
    "sequence_experiments",
]

# What a step without a winner rule is measured on, and over how long.
DEFAULT_METRIC = {"email": Metric.CLICKED, "sms": Metric.REPLIED}
DEFAULT_WITHIN = timedelta(days=7)


@dataclass(frozen=True)
class VariantResult:
    """One variant of a step: what it sends and how often a matured send succeeded."""

    id: str
    template: str
    subject: str | None
    weight: float
    sends: int
    matured: int
    successes: int
    rate: float | None  # successes / matured; None before any send matured


@dataclass(frozen=True)
class Decision:
    """The variant a step gives every later lead, how it was chosen and what the test saw."""

    variant: str
    kind: str
    reason: str
    picked_at: str
    figures: dict[str, Any]


@dataclass(frozen=True)
class Experiment:
    """A step with variants: what success means for it, where it stands, each variant's results."""

    sequence: str
    milestone: str
    step: str
    channel: str
    metric: str
    within: str
    after: int | None  # the winner rule's sends per look; None without a rule
    confidence: float | None
    status: ExperimentStatus
    pick: Decision | None
    variants: list[VariantResult]


@dataclass(frozen=True)
class Holdout:
    """A sequence that holds a share of its new leads out, to measure what its sends add."""

    sequence: str
    share: float


@dataclass(frozen=True)
class Overview:
    """Every experiment of the sequences loaded."""

    experiments: list[Experiment]
    holdouts: list[Holdout]

    def as_dict(self) -> dict[str, Any]:
        """As JSON for scripts and the API."""
        return asdict(self)


def experiments_overview(session: Session, rt: Runtime, now: datetime) -> Overview:
    """Each step with variants of every current sequence, and each sequence's holdout."""
    picked = picks(session)
    return Overview(
        [
            _experiment(session, sequence, milestone, step, picked, now)
            for sequence in rt.sequences
            for milestone, step in sequence.experiments()
        ],
        [Holdout(s.name, s.holdout) for s in rt.sequences if s.holdout > 0],
    )


def _experiment(
    session: Session,
    sequence: Sequence,
    milestone: str,
    step: Send,
    picked: dict[Place, VariantPick],
    now: datetime,
) -> Experiment:
    rule = step.winner
    metric = rule.metric if rule else DEFAULT_METRIC[step.channel]
    within = rule.within if rule else DEFAULT_WITHIN
    names = sequence.known_as(milestone, step)
    found = step_outcomes(session, sequence.name, names, metric, within, now)
    pick = pick_of(picked, sequence.name, names)
    status = ExperimentStatus.RUNNING
    if pick is not None:
        status = (
            ExperimentStatus.PICKED if pick.kind == PickKind.MANUAL else ExperimentStatus.DECIDED
        )
    elif rule is not None:
        judged = min(len(found.matured.get(v.id, [])) for v in step.variants)
        if judged >= MAX_LOOKS * rule.after:  # every look taken, none won
            status = ExperimentStatus.INCONCLUSIVE
    return Experiment(
        sequence=sequence.name,
        milestone=milestone,
        step=step.id,
        channel=step.channel,
        metric=str(metric),
        within=format_duration(within),
        after=rule.after if rule else None,
        confidence=rule.confidence if rule else None,
        status=status,
        pick=_decision(pick) if pick is not None else None,
        variants=[_variant(v, found) for v in step.variants],
    )


def _decision(pick: VariantPick) -> Decision:
    return Decision(
        pick.variant, str(pick.kind), pick.reason, as_utc(pick.picked_at).isoformat(), pick.figures
    )


def _variant(variant: Variant, found: StepOutcomes) -> VariantResult:
    matured = found.matured.get(variant.id, [])
    successes = sum(matured)
    return VariantResult(
        id=variant.id,
        template=variant.template,
        subject=variant.subject,
        weight=variant.weight,
        sends=found.sends(variant.id),
        matured=len(matured),
        successes=successes,
        rate=successes / len(matured) if matured else None,
    )


@dataclass(frozen=True)
class SequenceExperiments:
    """One sequence's experiments and its holdout, as the report and the dashboard show them."""

    sequence: str
    holdout_share: float
    experiments: list[Experiment]
    holdout: HoldoutReport | None  # None: no holdout now, and no lead ever held out

    def as_dict(self) -> dict[str, Any]:
        """As JSON for scripts and the API."""
        return asdict(self)


def _held(session: Session, sequence: Sequence) -> bool:
    """True when the sequence holds leads out, or did in an earlier version."""
    if sequence.holdout > 0:
        return True
    held = select(Enrolment.id).where(Enrolment.sequence == sequence.name, Enrolment.holdout)
    return session.scalar(held.limit(1)) is not None


def sequence_experiments(
    session: Session, rt: Runtime, sequence_name: str, now: datetime
) -> SequenceExperiments:
    """The experiments of one loaded sequence; UnknownSequenceError names the loaded ones."""
    sequence = rt.workflows.sequences.get(sequence_name)
    if sequence is None:
        raise UnknownSequenceError(sequence_name, sorted(rt.workflows.sequences))
    picked = picks(session, VariantPick.sequence == sequence.name)
    return SequenceExperiments(
        sequence.name,
        sequence.holdout,
        [
            _experiment(session, sequence, milestone, step, picked, now)
            for milestone, step in sequence.experiments()
        ],
        holdout_report(session, sequence.name, now) if _held(session, sequence) else None,
    )
