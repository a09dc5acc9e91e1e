"""`merge: auto`: the pairs of leads that calls named together, merged by the scheduler.

A call that gives a lead an identity another lead holds lists the pair (`LeadConflict`) and
goes on; merging there, inside the call's transaction, would lock a second lead out of id
order. Each pair is merged here in a transaction of its own, the younger lead into the
older (whose id links and the CRM already know), so an event is never held up by a merge.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from engine.errors import InvalidLeadError, UnknownLeadError
from engine.funnel.service import Outcome, merge_leads
from engine.models import LeadConflict
from engine.workflow.runtime import Runtime

log = logging.getLogger(__name__)

MERGE_BATCH = 100  # pairs per pass; a full batch leaves the rest for the next
_PAIRS = select(LeadConflict.id, LeadConflict.lead_id, LeadConflict.other_id).order_by(
    LeadConflict.id
)


def merge_listed(
    sessions: sessionmaker[Session], rt: Runtime, batch: int = MERGE_BATCH
) -> list[Outcome]:
    """Merge the listed pairs, each in its own transaction; their outcomes (a handoff, due
    enrolments) for the caller to follow up."""
    with sessions() as session:
        pairs = session.execute(_PAIRS.limit(batch)).all()
    outcomes = []
    for conflict_id, lead_id, other_id in pairs:
        keep, other = sorted((lead_id, other_id))
        try:
            with sessions.begin() as session:
                _, outcome = merge_leads(session, rt, keep, other)
        except UnknownLeadError:
            continue  # an earlier merge of this pass moved the pair on: listed again
        except InvalidLeadError as error:  # an erased lead: nothing to merge, ever
            log.warning("lead conflict %s not merged: %s", conflict_id, error)
            with sessions.begin() as session:
                session.execute(delete(LeadConflict).where(LeadConflict.id == conflict_id))
        except Exception:  # a lock time-out, a deadlock: this pair waits, no other does
            log.exception("merging leads %s and %s failed: tried again next pass", keep, other)
        else:  # committed: its follow-up work is real
            outcomes.append(outcome)
            log.info("merged lead %s into lead %s", other, keep)
    return outcomes
