"""What leads do and become: the one check of a lead record and lead files read as a stream,
identity, facts, scoring, stages, journey, rollout of edits; service.py fronts it.

May import: workflow and the low floors. Never delivery, runner, read, http or cli.
"""

from engine.funnel.lead_fields import check_lead
from engine.funnel.lead_files import LeadFile, Rejected, Row
from engine.funnel.leads import Identity
from engine.funnel.rollout import Plan, StrandedError, apply, make_plan
from engine.funnel.service import (
    Outcome,
    merge_leads,
    recycle_lead,
    refresh_leads,
    reprocess,
    track,
    upsert_lead,
    win_lead,
)

__all__ = [
    "Identity",
    "LeadFile",
    "Outcome",
    "Plan",
    "Rejected",
    "Row",
    "StrandedError",
    "apply",
    "check_lead",
    "make_plan",
    "merge_leads",
    "recycle_lead",
    "refresh_leads",
    "reprocess",
    "track",
    "upsert_lead",
    "win_lead",
]
