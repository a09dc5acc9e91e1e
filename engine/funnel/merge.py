"""Two leads that are one person made one: the survivor takes the other's past and future.

`fold` moves every row of the merged lead to the survivor (events, ledger, stage changes,
enrolments, deliveries, handoffs, consents, topic opt-outs, visitors), keeps what each knew
of the person (the survivor's values first), the stricter consent and the further stage, and
leaves the merged lead's identities as aliases that still name the survivor. Rescoring the
survivor over the joined past is the caller's (`service.merge_leads`), so the ledger sums to
the score and a crossing of SQL hands off once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from engine.db import changed_rows
from engine.errors import InvalidLeadError
from engine.funnel.journey import exit_enrolment
from engine.funnel.lead_fields import lookup_value
from engine.funnel.lifecycle import set_stage
from engine.models import (
    IDENTITY_FIELDS,
    STANDARD_FIELDS,
    Consent,
    Delivery,
    Enrolment,
    EnrolmentStatus,
    Event,
    Handoff,
    Lead,
    LeadAlias,
    LeadConflict,
    ScoreEntry,
    Stage,
    StageChange,
    TopicOptOut,
    Visitor,
)
from engine.workflow.runtime import Runtime

# How far along the funnel a stage is: a merge keeps the further of the two.
_RANK = {
    Stage.SUBSCRIBER: 0,
    Stage.LEAD: 1,
    Stage.RECYCLED: 1,
    Stage.MQL: 2,
    Stage.SQL: 3,
    Stage.CUSTOMER: 4,
}
# Rows that belong to a lead and simply follow it to the survivor.
_FOLLOWING = (Event, ScoreEntry, StageChange, Enrolment, Delivery, Consent, Visitor)


@dataclass
class Folded:
    """What a merge moved: rows per table, enrolments ended as duplicates, aliases left."""

    survivor: int
    merged: int
    merged_key: str
    moved: dict[str, int] = field(default_factory=dict)
    collapsed: list[int] = field(default_factory=list)  # enrolments ended: a duplicate run
    aliases: list[tuple[str, str]] = field(default_factory=list)


def fold(session: Session, rt: Runtime, survivor: Lead, other: Lead) -> Folded:
    """Merge `other` into `survivor` (both row-locked by the caller) and delete `other`."""
    if survivor.id == other.id:
        raise InvalidLeadError("a lead cannot be merged with itself")
    for lead in (survivor, other):
        if lead.erased_at is not None:
            raise InvalidLeadError(f"lead {lead.id} is erased: there is nothing to merge")
    now = rt.clock.now()
    session.flush()
    done = Folded(survivor.id, other.id, other.key)
    for table in _FOLLOWING:
        statement = update(table).where(table.lead_id == other.id).values(lead_id=survivor.id)
        done.moved[table.__tablename__] = changed_rows(session, statement)
    done.moved["handoffs"] = _handoffs(session, survivor, other)
    done.moved["topic_opt_outs"] = _topics(session, survivor, other)
    _conflicts(session, survivor, other)
    changed_rows(
        session,
        update(LeadAlias).where(LeadAlias.lead_id == other.id).values(lead_id=survivor.id),
    )
    session.expire_all()  # rows moved under the ORM: read them again (the locks stay held)
    kept: dict[str, str | None] = {name: getattr(other, name) for name in IDENTITY_FIELDS}
    kept["id"] = str(other.id)  # tokens and links name it by id: they find the survivor
    _join(session, survivor, other, now)
    session.delete(other)
    session.flush()  # its identities are free: the survivor may take those it lacks
    for name, value in kept.items():
        if value is None:
            continue
        if name != "id" and getattr(survivor, name) is None:
            setattr(survivor, name, value)
        else:
            key = lookup_value(name, value)
            session.add(
                LeadAlias(
                    field=name, value=key, lead_id=survivor.id, merged_lead=other.id, merged_at=now
                )
            )
            if name != "id":
                done.aliases.append((name, key))
    done.collapsed = _collapse(session, rt, survivor)
    session.flush()
    return done


def _join(session: Session, survivor: Lead, other: Lead, now: datetime) -> None:
    """What the survivor keeps of the person: its own values, else the other's; the stricter
    consent; the further stage; both leads' SQL crossings."""
    for name in (*STANDARD_FIELDS, "owner"):
        if getattr(survivor, name) in (None, ""):
            setattr(survivor, name, getattr(other, name))
    survivor.fields = {**(other.fields or {}), **(survivor.fields or {})}
    survivor.email_consent = _consent(
        survivor.email, survivor.email_consent, other.email, other.email_consent
    )
    survivor.sms_consent = _consent(
        survivor.phone, survivor.sms_consent, other.phone, other.sms_consent
    )
    survivor.created_at = min(survivor.created_at, other.created_at)
    survivor.last_activity_at = _latest(survivor.last_activity_at, other.last_activity_at)
    survivor.inactive_due_at = _latest(survivor.inactive_due_at, other.inactive_due_at)
    survivor.mql_at = _earliest(survivor.mql_at, other.mql_at)
    survivor.sql_at = _earliest(survivor.sql_at, other.sql_at)
    survivor.sql_crossings += other.sql_crossings
    # the ledger rows moved with it: the score is their sum until the caller rescores
    survivor.fit += other.fit
    survivor.engagement += other.engagement
    survivor.updated_at = now
    if _RANK[other.stage] > _RANK[survivor.stage]:
        set_stage(session, survivor, other.stage, f"merged with {other.key}", now)


def _consent(mine: str | None, given: bool, theirs: str | None, their_given: bool) -> bool:
    """A channel's consent: the stricter of the two where both leads have an address on it,
    else that of the lead that has one (the other's is only the default)."""
    if (mine is None) != (theirs is None):
        return given if mine is not None else their_given
    return given and their_given


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return max((t for t in (a, b) if t is not None), default=None)


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return min((t for t in (a, b) if t is not None), default=None)


def _handoffs(session: Session, survivor: Lead, other: Lead) -> int:
    """The other's handoffs, numbered after the survivor's crossings (one per crossing)."""
    return changed_rows(
        session,
        update(Handoff)
        .where(Handoff.lead_id == other.id)
        .values(lead_id=survivor.id, crossing=Handoff.crossing + survivor.sql_crossings),
    )


def _topics(session: Session, survivor: Lead, other: Lead) -> int:
    """The topics the other left, unless the survivor left them too."""
    left = select(TopicOptOut.topic).where(TopicOptOut.lead_id == survivor.id)
    return changed_rows(
        session,
        update(TopicOptOut)
        .where(TopicOptOut.lead_id == other.id, TopicOptOut.topic.not_in(left.scalar_subquery()))
        .values(lead_id=survivor.id),
    )


def _conflicts(session: Session, survivor: Lead, other: Lead) -> None:
    """Conflicts between the two are settled; the other's with third leads become the
    survivor's (one row per pair and key)."""
    pair = (survivor.id, other.id)
    session.execute(
        delete(LeadConflict).where(LeadConflict.lead_id.in_(pair), LeadConflict.other_id.in_(pair))
    )
    rows = session.scalars(
        select(LeadConflict).where(
            (LeadConflict.lead_id == other.id) | (LeadConflict.other_id == other.id)
        )
    ).all()
    for row in rows:
        lead_id = survivor.id if row.lead_id == other.id else row.lead_id
        other_id = survivor.id if row.other_id == other.id else row.other_id
        same = session.scalar(
            select(func.count())
            .select_from(LeadConflict)
            .where(
                LeadConflict.lead_id == lead_id,
                LeadConflict.other_id == other_id,
                LeadConflict.field == row.field,
            )
        )
        if same:
            session.delete(row)
        else:
            row.lead_id, row.other_id = lead_id, other_id
    session.flush()


def _collapse(session: Session, rt: Runtime, survivor: Lead) -> list[int]:
    """Two running enrolments of one sequence become one: the furthest along runs on (the
    steps it has ahead were sent by neither), the others end with their planned sends."""
    running = session.scalars(
        select(Enrolment)
        .where(Enrolment.lead_id == survivor.id, Enrolment.status == EnrolmentStatus.ACTIVE)
        .order_by(Enrolment.enrolled_at, Enrolment.id)
    ).all()
    by_sequence: dict[str, list[Enrolment]] = {}
    for enrolment in running:
        by_sequence.setdefault(enrolment.sequence, []).append(enrolment)
    ended = []
    for runs in by_sequence.values():
        if len(runs) < 2:
            continue
        furthest = max(runs, key=lambda e: _progress(session, rt, e))
        for enrolment in runs:
            if enrolment is not furthest:
                reason = f"merged: runs on in enrolment {furthest.id}"
                exit_enrolment(session, rt, enrolment, reason)
                ended.append(enrolment.id)
    return ended


def _progress(session: Session, rt: Runtime, enrolment: Enrolment) -> tuple[Any, ...]:
    """How far an enrolment is along its sequence: milestone, then pass and step; the older
    one wins a tie (it has run longer)."""
    sequence = rt.pinned(session, enrolment.sequence, enrolment.sequence_version)
    try:
        milestone = -1 if sequence is None else sequence.index(enrolment.milestone)
    except ValueError:
        milestone = -1
    return (milestone, enrolment.pass_no, enrolment.position, -enrolment.id)
