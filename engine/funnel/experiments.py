"""Experiments at planning time: the variant of a step a lead gets, and the holdout group.

Every draw is a hash of the lead's identity and the step (or sequence), so a retry, a replay,
a backtest or a simulation of the same lead draws the same answer, and no state is needed
until a delivery stores what was drawn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence as Many

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from engine.models import Delivery, Lead, VariantPick
from engine.workflow.spec import Send, Sequence, Variant

__all__ = ["by_weight", "choose_variant", "draw", "held_out"]

_EARLIER = (
    select(Delivery.variant)
    .where(
        Delivery.lead_id == bindparam("lead"),
        Delivery.sequence == bindparam("sequence"),
        Delivery.milestone.in_(bindparam("milestones", expanding=True)),
        Delivery.step.in_(bindparam("steps", expanding=True)),
        Delivery.variant.in_(bindparam("variants", expanding=True)),
    )
    .order_by(Delivery.planned_at.desc())
    .limit(1)
)
_PICKED = (
    select(VariantPick.variant)
    .where(
        VariantPick.sequence == bindparam("sequence"),
        VariantPick.milestone.in_(bindparam("milestones", expanding=True)),
        VariantPick.step.in_(bindparam("steps", expanding=True)),
    )
    .order_by(VariantPick.picked_at.desc())
    .limit(1)
)


def draw(*parts: str) -> float:
    """A number in [0, 1) fixed by `parts`, spread evenly over leads."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def by_weight(variants: Many[Variant], point: float) -> Variant:
    """The variant whose share of the weights `point` (in [0, 1)) falls in."""
    total = sum(v.weight for v in variants)
    reached = 0.0
    for variant in variants:
        reached += variant.weight / total
        if point < reached:
            return variant
    return variants[-1]  # rounding left `point` just past the last share


def held_out(lead: Lead, sequence: Sequence) -> bool:
    """True when the lead falls in the sequence's holdout group: enrolled, but sent nothing."""
    return sequence.holdout > 0 and draw(lead.key, sequence.name, "holdout") < sequence.holdout


def choose_variant(
    session: Session, lead: Lead, sequence: Sequence, milestone: str, step: Send
) -> Variant:
    """The variant of `step` for this lead: the one it got before (an edit of weights or new
    variants never reassigns a lead), else the step's picked winner, else its own draw."""
    names = sequence.known_as(milestone, step)  # a rename keeps a lead's variant and the pick
    where = {"sequence": sequence.name, "milestones": names.milestones, "steps": names.steps}
    kept = {"lead": lead.id, "variants": [v.id for v in step.variants], **where}
    earlier = step.variant(session.scalar(_EARLIER, kept))  # a removed one does not count
    if earlier is not None:
        return earlier
    picked = step.variant(session.scalar(_PICKED, where))
    if picked is not None:
        return picked
    return by_weight(step.variants, draw(lead.key, sequence.name, milestone, step.id))
