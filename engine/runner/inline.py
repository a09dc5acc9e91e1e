"""Everything due, run in this process: the scheduler and a worker in one loop.

The simulator, the benchmarks and tests use it; production splits the same work between the
scheduler (claims) and workers (advance) over the broker.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from engine.funnel.service import refresh_leads, reprocess
from engine.models import MergeMode
from engine.runner.merging import merge_listed
from engine.runner.scheduler import (
    advance_enrolment,
    claim_due_enrolments,
    claim_due_leads,
    claim_failed_events,
)
from engine.workflow.runtime import Runtime


def run_due(
    sessions: sessionmaker[Session],
    rt: Runtime,
    *,
    batch: int = 500,
    on_lead: Callable[[int], None] | None = None,
) -> int:
    """Process everything due now in this process: event retries, decay, inactivity, steps.

    Used by the embedded runner, the simulator and tests; production splits the same work
    between the scheduler (claims) and workers (advance) over the broker.
    """
    handled = 0
    while True:
        if rt.merge is MergeMode.AUTO:
            handled += len(merge_listed(sessions, rt))
        now = rt.clock.now()
        with sessions.begin() as session:
            event_ids = claim_failed_events(session, now, batch)
        for event_id in event_ids:
            with sessions.begin() as session:
                reprocess(session, rt, event_id)
        with sessions.begin() as session:
            lead_ids = claim_due_leads(session, now, batch)
        for lead_id in lead_ids:
            with sessions.begin() as session:
                refresh_leads(session, rt, [lead_id])  # none when merged away
            if on_lead is not None:
                on_lead(lead_id)
        with sessions.begin() as session:
            enrolment_ids = claim_due_enrolments(session, now, batch)
        for enrolment_id in enrolment_ids:
            with sessions.begin() as session:
                advance_enrolment(session, rt, enrolment_id)
        handled += len(event_ids) + len(lead_ids) + len(enrolment_ids)
        if not event_ids and not lead_ids and not enrolment_ids:
            return handled
