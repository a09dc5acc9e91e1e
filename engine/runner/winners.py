"""Winners of experiments: decided by each step's winner rule, or picked by hand.

The scheduler judges every open experiment at most once per `JUDGE_EVERY` of clock time
(`decide_winners`); a decision is one `variant_picks` row per step, so with several
schedulers it is still taken once, and later leads of the step get that variant.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.errors import UnknownExperimentError, UnknownSequenceError
from engine.models import PickKind, VariantPick
from engine.read.significance import MAX_LOOKS, judge
from engine.read.variants import Place, matured_sends, pick_of, picks, step_outcomes
from engine.workflow.runtime import Runtime
from engine.workflow.spec import Send, Sequence

__all__ = ["JUDGE_EVERY", "decide_winners", "find_step", "pick_variant"]

JUDGE_EVERY = timedelta(hours=6)  # decisions wait for days of sends; a few hours late is nothing


def decide_winners(
    session: Session, rt: Runtime, now: datetime, judged: dict[Place, int] | None = None
) -> list[VariantPick]:
    """Judge each step whose winner rule has not decided yet; record the winners found.

    `judged` remembers, per step, how many looks were judged without a winner, so a caller
    that judges again and again (the scheduler) reads a step's sends once per new look.
    """
    todo = [
        (sequence, milestone, step)
        for sequence in rt.sequences
        for milestone, step in sequence.experiments()
        if step.winner is not None
    ]
    if not todo:
        return []
    picked = picks(session)
    decided = []
    for sequence, milestone, step in todo:
        names = sequence.known_as(milestone, step)
        if pick_of(picked, sequence.name, names) is not None:
            continue
        assert step.winner is not None
        rule = step.winner
        ready = matured_sends(session, sequence.name, names, rule.within, now)
        looks = min(min(ready.get(v.id, 0) for v in step.variants) // rule.after, MAX_LOOKS)
        place = (sequence.name, milestone, step.id)
        if looks == 0 or (judged or {}).get(place, 0) >= looks:
            continue  # no new look: a variant lacks the sends of the next one
        found = step_outcomes(session, sequence.name, names, rule.metric, rule.within, now)
        # Only the variants the step has now: one removed by an edit is out of the race.
        verdict = judge(
            {v.id: found.matured.get(v.id, []) for v in step.variants}, rule.after, rule.confidence
        )
        if verdict is None:
            if judged is not None:
                judged[place] = looks
            continue
        figures = verdict.figures() | {
            "metric": str(rule.metric),
            "within": rule.within.total_seconds(),
            "after": rule.after,
            "confidence": rule.confidence,
        }
        row = VariantPick(
            sequence=sequence.name,
            milestone=milestone,
            step=step.id,
            variant=verdict.variant,
            kind=PickKind.AUTO,
            figures=figures,
            reason=(
                f"{verdict.variant} won on {rule.metric} at look {verdict.look}"
                f" ({verdict.look * rule.after} sends each), p < {verdict.alpha:.2g}"
            ),
            picked_at=now,
        )
        try:
            with session.begin_nested():  # another scheduler may have decided it meanwhile
                session.add(row)
        except IntegrityError:
            continue
        decided.append(row)
    return decided


def find_step(rt: Runtime, sequence_name: str, step_ref: str) -> tuple[Sequence, str, Send]:
    """The step with variants that `step_ref` names: `step` or `milestone/step`."""
    sequence = rt.workflows.sequences.get(sequence_name)
    if sequence is None:
        raise UnknownSequenceError(sequence_name, sorted(rt.workflows.sequences))
    milestone, _, step_id = step_ref.rpartition("/")
    found = [(m, s) for m, s in sequence.experiments() if s.id == step_id and milestone in ("", m)]
    if len(found) != 1:
        steps = ", ".join(f"{m}/{s.id}" for m, s in sequence.experiments()) or "none"
        what = "names steps in more than one milestone" if found else "is no step with variants"
        raise UnknownExperimentError(
            f"{step_ref!r} {what} in {sequence_name} (steps with variants: {steps})"
        )
    return sequence, found[0][0], found[0][1]


def pick_variant(
    session: Session, rt: Runtime, sequence_name: str, step_ref: str, variant: str, now: datetime
) -> VariantPick:
    """Give every later lead of a step this variant, overriding any automatic decision."""
    sequence, milestone, step = find_step(rt, sequence_name, step_ref)
    if step.variant(variant) is None:
        known = ", ".join(v.id for v in step.variants)
        raise UnknownExperimentError(f"unknown variant {variant!r} (variants: {known})")
    row = pick_of(picks(session), sequence.name, sequence.known_as(milestone, step))
    before = f" (was {row.variant}, {row.kind})" if row is not None else ""
    if row is None:
        row = VariantPick(sequence=sequence.name, figures={})
        session.add(row)
    row.milestone, row.step = milestone, step.id  # under the step's name now
    row.variant, row.kind, row.picked_at = variant, PickKind.MANUAL, now
    row.reason = f"picked by hand{before}"
    return row
