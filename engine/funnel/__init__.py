"""What leads do and become: identity, facts, scoring, stages, journey, rollout of edits;
service.py fronts it.

May import: workflow and the low floors. Never delivery, runner, read, http or cli.
"""

from engine.funnel.leads import Identity
from engine.funnel.rollout import Plan, StrandedError, apply, make_plan
from engine.funnel.service import (
    Outcome,
    recycle_lead,
    refresh,
    reprocess,
    track,
    upsert_lead,
    win_lead,
)

__all__ = [
    "Identity",
    "Outcome",
    "Plan",
    "StrandedError",
    "apply",
    "make_plan",
    "recycle_lead",
    "refresh",
    "reprocess",
    "track",
    "upsert_lead",
    "win_lead",
]
